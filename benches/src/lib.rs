//! Benchmarks live in `benches/` (pipeline stage ceilings, `cargo bench -p pgbunker-benches`)
//! and in the scripts beside this crate that compare pgbunker with pgBackRest end to end.
