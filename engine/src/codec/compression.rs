//! zstd settings per object kind, and compression contexts reused per thread.
//!
//! WAL is tuned: at the fast levels (1 and the negative ones) zstd looks for matches of at
//! least 6 bytes, and WAL is full of shorter repeats (record headers, block references,
//! tuple headers). A minimum match of 5 was measured on 32 real pgbench segments
//! (`zstd -B1M`, one core): level -1 with it stores 38.6 MB where level 1 stores 42.1 MB and
//! level 3 stores 36.6 MB, and compresses at 1100 MB/s against 980 and 630. That is why new
//! repositories compress WAL at level -1 (see `repo::InitOptions`).

use std::cell::RefCell;

use zstd::bulk::Compressor;
use zstd::zstd_safe::CParameter;

use super::ObjectKind;

/// Inputs at least this large compress with zstd worker threads in one-shot sealing.
const MULTITHREAD_MIN: usize = 4 << 20;

/// The zstd levels a repository may be configured with (0 is not one: it means "store").
pub const LEVELS: std::ops::RangeInclusive<i32> = -7..=19;

/// Is `level` a compression level we accept (in [`LEVELS`] and not 0)?
pub fn is_valid_level(level: i32) -> bool {
    level != 0 && LEVELS.contains(&level)
}

fn compressor(kind: ObjectKind, level: i32) -> Option<Compressor<'static>> {
    let mut c = Compressor::new(level).ok()?;
    if kind == ObjectKind::Wal && level <= 1 {
        c.set_parameter(CParameter::MinMatch(5)).ok()?;
    }
    Some(c)
}

/// Runs `f` with this thread's context for (`kind`, `level`), created once per thread and
/// setting: a fresh context per call allocates and faults in its workspace (about 1 MiB at
/// level 3) for every 64 KiB block or 1 MiB part, which costs more than the compression.
fn with_thread_context<R>(
    kind: ObjectKind,
    level: i32,
    f: impl FnOnce(&mut Compressor<'static>) -> Option<R>,
) -> Option<R> {
    type Slot = Option<((ObjectKind, i32), Compressor<'static>)>;
    thread_local! {
        static CONTEXT: RefCell<Slot> = const { RefCell::new(None) };
    }
    CONTEXT.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(s, _)| *s != (kind, level)) {
            *slot = Some(((kind, level), compressor(kind, level)?));
        }
        let (_, c) = slot.as_mut()?;
        f(c)
    })
}

/// Compresses one part with this thread's context. `None` when zstd fails.
pub fn compress_part(kind: ObjectKind, level: i32, input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(input.len()));
    with_thread_context(kind, level, |c| c.compress_to_buffer(input, &mut out).ok())?;
    Some(out)
}

/// zstd-compresses `data` in one frame into a buffer with `reserve` spare bytes (for the
/// envelope's header and tag); `None` when that saves less than 1/32 of the size. Small
/// inputs (blocks) use this thread's context; large ones a context with worker threads.
pub fn compress_whole(
    kind: ObjectKind,
    data: &[u8],
    level: i32,
    reserve: usize,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()) + reserve);
    if data.len() < MULTITHREAD_MIN {
        with_thread_context(kind, level, |c| c.compress_to_buffer(data, &mut out).ok())?;
    } else {
        let mut c = compressor(kind, level)?;
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as u32;
        if workers > 1 {
            // Ignored (and harmless) if the library was built without multithreading.
            let _ = c.set_parameter(CParameter::NbWorkers(workers));
        }
        c.compress_to_buffer(data, &mut out).ok()?;
    }
    worth_it(out.len(), data.len()).then_some(out)
}

/// Frames whose header states a content size up to this are decompressed in one call with
/// this thread's context into a buffer of exactly that size; others (streamed frames, such as
/// manifests) stream.
const ONE_CALL_MAX: u64 = 64 << 20;

/// Decompresses one zstd frame (an authenticated envelope body). Blocks take the one-call
/// path: a fresh streaming decoder per 64 KiB block allocated and faulted in its buffers for
/// each one.
pub fn decompress_whole(frame: &[u8]) -> Result<Vec<u8>, String> {
    type Slot = Option<zstd::bulk::Decompressor<'static>>;
    thread_local! {
        static CONTEXT: RefCell<Slot> = const { RefCell::new(None) };
    }
    match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) if size <= ONE_CALL_MAX => CONTEXT.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
            }
            let d = slot.as_mut().expect("set above");
            let mut out = Vec::with_capacity(size as usize);
            d.decompress_to_buffer(frame, &mut out)
                .map_err(|e| e.to_string())?;
            Ok(out)
        }),
        _ => zstd::stream::decode_all(frame).map_err(|e| e.to_string()),
    }
}

/// Decompresses one zstd frame into `out`, which must hold its content; returns the length.
pub fn decompress_into(frame: &[u8], out: &mut [u8]) -> Result<usize, String> {
    thread_local! {
        static CONTEXT: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { RefCell::new(None) };
    }
    CONTEXT.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
        }
        slot.as_mut()
            .expect("set above")
            .decompress_to_buffer(frame, out)
            .map_err(|e| e.to_string())
    })
}

/// Compression is kept only when it saves at least 1/32 of the size.
pub fn worth_it(compressed: usize, original: usize) -> bool {
    compressed + original / 32 < original
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_tuning_finds_five_byte_repeats_the_default_misses() {
        // Five-byte words from a small vocabulary, each followed by a random byte: only a
        // minimum match of 5 can use the repeats.
        let mut x = 12345u32;
        let mut next = || {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        };
        let words: Vec<[u8; 5]> = (0..16)
            .map(|_| [next(), next(), next(), next(), next()])
            .collect();
        let mut data = Vec::new();
        for _ in 0..100_000 {
            let w = words[usize::from(next() % 16)];
            data.extend_from_slice(&w);
            data.push(next());
        }
        let wal = compress_part(ObjectKind::Wal, -1, &data).unwrap();
        let block = compress_part(ObjectKind::Block, -1, &data).unwrap();
        assert!(
            wal.len() < block.len() * 9 / 10,
            "WAL tuning: {} bytes against {}",
            wal.len(),
            block.len()
        );
        assert_eq!(zstd::bulk::decompress(&wal, data.len()).unwrap(), data);
    }

    #[test]
    fn levels() {
        assert!(is_valid_level(-1) && is_valid_level(1) && is_valid_level(19));
        assert!(!is_valid_level(0) && !is_valid_level(20) && !is_valid_level(-8));
    }
}
