//! Benchmarks live in `benches/` (pipeline stage ceilings, `cargo bench -p pgcairn-benches`)
//! and in the scripts beside this crate that compare pgcairn with pgBackRest end to end.
