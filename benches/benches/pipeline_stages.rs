//! Per-core ceilings of each pipeline stage: keyed BLAKE3, PostgreSQL page checksums, zstd
//! levels 1 and 3, levels 1 and -1 with the WAL tuning, XChaCha20-Poly1305, and the whole
//! seal as archive-push does it.
//!
//! `cargo bench -p pgcairn-benches` runs it on synthetic, WAL-like data; set
//! `PGCAIRN_BENCH_WAL=/path/to/segment` to measure on a real WAL segment instead.
//! Everything but the last lines is single-threaded on purpose: those numbers are per core.
//! The last lines seal and open the way archive-push and archive-get do, on every core.

use std::time::{Duration, Instant};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use pgcairn_engine::codec::compression::compress_part;
use pgcairn_engine::codec::{Codec, ObjectKind};
use pgcairn_engine::crypto::MasterSecret;
use pgcairn_engine::pg::checksum;

/// Runs `f` repeatedly for at least `budget` and returns MB/s over `bytes` per call.
fn throughput(bytes: usize, budget: Duration, mut f: impl FnMut()) -> f64 {
    f(); // warm up
    let started = Instant::now();
    let mut calls = 0u64;
    while started.elapsed() < budget {
        f();
        calls += 1;
    }
    (bytes as f64 * calls as f64) / started.elapsed().as_secs_f64() / 1e6
}

/// WAL-like synthetic data: page headers, record-ish runs and zero tails.
fn synthetic_wal(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for page in v.chunks_mut(8192) {
        // Roughly 70% of each page carries record bytes, the rest is zero padding.
        for b in page.iter_mut().take(5700) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = if x.is_multiple_of(4) {
                (x >> 32) as u8
            } else {
                (x % 16) as u8
            };
        }
    }
    v
}

fn main() {
    let data = match std::env::var("PGCAIRN_BENCH_WAL") {
        Ok(p) => std::fs::read(&p).unwrap_or_else(|e| panic!("reading {p}: {e}")),
        Err(_) => synthetic_wal(16 << 20),
    };
    let budget = Duration::from_millis(
        std::env::var("PGCAIRN_BENCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1500),
    );
    let n = data.len();
    println!(
        "input: {} MiB ({})",
        n >> 20,
        if std::env::var("PGCAIRN_BENCH_WAL").is_ok() {
            "real WAL segment"
        } else {
            "synthetic WAL-like data"
        }
    );
    println!("{:<34} {:>10}", "stage (one core)", "MB/s");

    let key = [7u8; 32];
    let blake = throughput(n, budget, || {
        std::hint::black_box(blake3::keyed_hash(&key, &data));
    });
    println!("{:<34} {:>10.0}", "keyed BLAKE3", blake);

    // Every page a backup reads is checked against its PostgreSQL checksum.
    let pages = throughput(n, budget, || {
        for (i, page) in data.chunks_exact(checksum::BLCKSZ).enumerate() {
            std::hint::black_box(checksum::checksum_page(page, i as u32));
        }
    });
    println!("{:<34} {:>10.0}", "PostgreSQL page checksum", pages);

    for level in [1, 3] {
        let mut c = zstd::bulk::Compressor::new(level).unwrap();
        let out = c.compress(&data).unwrap();
        let mbs = throughput(n, budget, || {
            std::hint::black_box(c.compress(&data).unwrap());
        });
        println!(
            "{:<34} {:>10.0}   (ratio {:.2})",
            format!("zstd level {level}"),
            mbs,
            n as f64 / out.len() as f64
        );
    }

    for level in [1, -1] {
        let tuned = compress_part(ObjectKind::Wal, level, &data).unwrap();
        let mbs = throughput(n, budget, || {
            std::hint::black_box(compress_part(ObjectKind::Wal, level, &data).unwrap());
        });
        println!(
            "{:<34} {:>10.0}   (ratio {:.2})",
            format!("zstd level {level}, WAL tuning"),
            mbs,
            n as f64 / tuned.len() as f64
        );
    }

    let cipher = XChaCha20Poly1305::new((&key).into());
    let nonce = XNonce::from_slice(&[1u8; 24]);
    let aead = throughput(n, budget, || {
        std::hint::black_box(cipher.encrypt(nonce, data.as_slice()).unwrap());
    });
    println!("{:<34} {:>10.0}", "XChaCha20-Poly1305 encrypt", aead);

    let codec = Codec::new("bench", MasterSecret::from_bytes([3; 32]).derive(), true, 1);
    let id = codec.content_id(&data);
    let sealed = codec.seal(ObjectKind::Wal, &id, b"bench", &data, 1);
    let seal = throughput(n, budget, || {
        std::hint::black_box(codec.seal(ObjectKind::Wal, &id, b"bench", &data, 1));
    });
    println!(
        "{:<34} {:>10.0}   (version 1 envelope, zstd workers)",
        "seal in one piece: zstd-1 + AEAD", seal
    );
    let open = throughput(n, budget, || {
        std::hint::black_box(codec.open(ObjectKind::Wal, &id, b"bench", &sealed).unwrap());
    });
    println!("{:<34} {:>10.0}", "open in one piece", open);

    println!(
        "{:<34} {:>10}",
        format!("all {} cores", rayon::current_num_threads()),
        "MB/s"
    );
    for level in [1, -1] {
        let (id, sealed) = codec.seal_parallel(ObjectKind::Wal, b"bench", &data, level);
        let seal = throughput(n, budget, || {
            std::hint::black_box(codec.seal_parallel(ObjectKind::Wal, b"bench", &data, level));
        });
        println!(
            "{:<34} {:>10.0}   (stored {:.1}%)",
            format!("seal_parallel, level {level}"),
            seal,
            100.0 * sealed.len() as f64 / n as f64
        );
        let open = throughput(n, budget, || {
            std::hint::black_box(codec.open(ObjectKind::Wal, &id, b"bench", &sealed).unwrap());
        });
        println!("{:<34} {:>10.0}", format!("open, level {level}"), open);
    }
}
