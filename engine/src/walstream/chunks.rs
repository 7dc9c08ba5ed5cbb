//! Streamed WAL in the repository: sealed sub-segment chunks, and the partial tail they form.
//!
//! A chunk holds bytes `start..end` of one segment, sealed like archived WAL (codec kind
//! `Wal`, so compressed and encrypted with the WAL key), under
//! `clusters/<c>/walstream/<TLI>/<segment>/<start>-<end>.<content id>`; its authenticated
//! context binds the cluster, the segment and the range, so a chunk copied under another name
//! does not open. Chunks are written create-only and in order: the receiver writes chunk
//! `n + 1` only after chunk `n` is durable, and reports a position flushed only after the
//! chunk ending there is. So the durable stream is always the contiguous run of chunks from
//! offset 0 of the newest segment; anything after a hole (which only a receiver killed between
//! two concurrent writes could leave; this receiver never has two in flight) is ignored.
//!
//! Once a segment is complete, the receiver archives it as an ordinary segment
//! ([`crate::archive::push`]) and deletes its chunks: the chunks are only ever the tail. A
//! crash between the two leaves chunks of an archived segment, which the next start deletes
//! (and a complete but unarchived segment, which it archives).
//!
//! Listing is used here, against the repository principle of naming what to read: a segment
//! holds hundreds of chunks at a few milliseconds of group commit, and one LIST per segment
//! is far cheaper than probing names one by one. Object stores list consistently today (S3
//! since 2020), and what a listing finds is still authenticated chunk by chunk.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::codec::ObjectKind;
use crate::crypto::ContentId;
use crate::error::{Error, Result};
use crate::repo::{layout, Repository};
use crate::storage::ObjectKey;
use crate::types::{SegmentNo, TimelineId, WalFileName};

/// How many chunks are fetched at once when a tail is assembled.
const READ_PARALLELISM: usize = 16;

/// One chunk as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The segment it belongs to.
    pub segment: WalFileName,
    /// First byte (offset in the segment).
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Keyed content id of the plaintext.
    pub id: ContentId,
    /// Its object key.
    pub key: ObjectKey,
}

/// The name of segment `segno` (absolute) on timeline `tli`.
pub fn segment_name(tli: u32, segno: u64, seg_size: u64) -> WalFileName {
    WalFileName::Segment {
        tli: TimelineId(tli),
        segno: SegmentNo::from_absolute(segno, seg_size),
    }
}

/// The associated data a chunk is sealed with: its cluster, segment and byte range.
pub(crate) fn context(cluster: &str, segment: &WalFileName, start: u64, end: u64) -> Vec<u8> {
    format!("walstream/{cluster}/{segment}/{start:X}-{end:X}").into_bytes()
}

/// Seals and stores bytes `start..start + data.len()` of `segment`: durable when it returns.
/// Sealing runs on the CPU pool.
pub async fn commit_chunk(
    repo: &Repository,
    cluster: &str,
    segment: &WalFileName,
    start: u64,
    data: Vec<u8>,
) -> Result<ObjectKey> {
    let end = start + data.len() as u64;
    let codec = repo.codec().clone();
    let level = repo.config().wal_compress_level;
    let ctx = context(cluster, segment, start, end);
    let (id, sealed) = crate::cpu::run(move || {
        let id = codec.content_id(&data);
        let sealed = codec.seal(ObjectKind::Wal, &id, &ctx, &data, level);
        (id, sealed)
    })
    .await;
    let key = layout::walstream_chunk(cluster, segment, start, end, &id);
    // AlreadyExists: the same name carries the same content id, so the same bytes.
    repo.storage().put_create(&key, Bytes::from(sealed)).await?;
    Ok(key)
}

fn sort(mut chunks: Vec<Chunk>) -> Vec<Chunk> {
    chunks.sort_by_key(|c| (c.start, c.end));
    chunks
}

/// Every chunk of the cluster, grouped by (timeline, absolute segment number), each group
/// sorted by offset.
pub async fn list_all(
    repo: &Repository,
    cluster: &str,
    seg_size: u64,
) -> Result<BTreeMap<(u32, u64), Vec<Chunk>>> {
    let mut out: BTreeMap<(u32, u64), Vec<Chunk>> = BTreeMap::new();
    for info in repo
        .storage()
        .list(&layout::walstream_prefix(cluster))
        .await?
    {
        let Some((segment, start, end, id)) =
            layout::parse_walstream_chunk(cluster, info.key.as_str())
        else {
            continue;
        };
        let Some(segno) = segment.segment() else {
            continue;
        };
        out.entry((segment.timeline().0, segno.absolute(seg_size)))
            .or_default()
            .push(Chunk {
                segment,
                start,
                end,
                id,
                key: info.key,
            });
    }
    Ok(out.into_iter().map(|(k, v)| (k, sort(v))).collect())
}

/// The chunks of one segment, sorted by offset.
pub async fn list_segment(
    repo: &Repository,
    cluster: &str,
    segment: &WalFileName,
) -> Result<Vec<Chunk>> {
    let mut chunks = Vec::new();
    for info in repo
        .storage()
        .list(&layout::walstream_segment_prefix(cluster, segment))
        .await?
    {
        if let Some((s, start, end, id)) = layout::parse_walstream_chunk(cluster, info.key.as_str())
        {
            if &s == segment {
                chunks.push(Chunk {
                    segment: s,
                    start,
                    end,
                    id,
                    key: info.key,
                });
            }
        }
    }
    Ok(sort(chunks))
}

/// The chunks that form the contiguous run from offset 0 (in order, each extending the run),
/// and the end of that run.
pub fn contiguous(chunks: &[Chunk]) -> (Vec<&Chunk>, u64) {
    let mut run = Vec::new();
    let mut end = 0;
    loop {
        // Of the chunks that start at or before the run's end and extend it, the longest.
        let next = chunks
            .iter()
            .filter(|c| c.start <= end && c.end > end)
            .max_by_key(|c| c.end);
        match next {
            Some(c) => {
                end = c.end;
                run.push(c);
            }
            None => return (run, end),
        }
    }
}

/// Reads the contiguous run of `chunks` from offset 0: the segment's durable prefix.
pub async fn read_prefix(repo: &Repository, cluster: &str, chunks: &[Chunk]) -> Result<Vec<u8>> {
    let (run, end) = contiguous(chunks);
    let mut out = vec![0u8; end as usize];
    let opened: Vec<(u64, u64, Vec<u8>)> = futures::stream::iter(run.into_iter().cloned())
        .map(|c| async move {
            let sealed = repo.storage().get(&c.key).await.map_err(|e| {
                if e.is_not_found() {
                    Error::corrupt(
                        c.key.to_string(),
                        "a streamed WAL chunk vanished while being read (the receiver archived its segment meanwhile?): try again",
                    )
                } else {
                    e.into()
                }
            })?;
            let codec = repo.codec().clone();
            let ctx = context(cluster, &c.segment, c.start, c.end);
            let key = c.key.to_string();
            let plain = crate::cpu::run(move || -> Result<Vec<u8>> {
                let (plain, id) = codec
                    .open_with_id(ObjectKind::Wal, &c.id, &ctx, &sealed)
                    .map_err(|e| Error::corrupt(key.clone(), e.to_string()))?;
                if id != c.id || plain.len() as u64 != c.end - c.start {
                    return Err(Error::corrupt(
                        key,
                        "content does not match the chunk's name (content id or length)",
                    ));
                }
                Ok(plain)
            })
            .await?;
            Ok::<_, Error>((c.start, c.end, plain))
        })
        .buffer_unordered(READ_PARALLELISM)
        .try_collect()
        .await?;
    for (start, end, plain) in opened {
        out[start as usize..end as usize].copy_from_slice(&plain);
    }
    Ok(out)
}

/// As [`read_prefix`], and when only the run's last chunk does not open, the prefix before
/// it, with that chunk and why it did not open. A chunk is acknowledged only once its put
/// returned (on `file://`, after its fsync), so the last one can be torn by a crash or power
/// loss during its write, before it was acknowledged; what precedes it is the durable stream.
/// Any other damaged chunk is an error: acknowledged WAL is missing.
pub async fn read_prefix_or_before_last(
    repo: &Repository,
    cluster: &str,
    chunks: &[Chunk],
) -> Result<(Vec<u8>, Option<(Chunk, Error)>)> {
    let whole = read_prefix(repo, cluster, chunks).await;
    let Err(Error::Corrupt { .. }) = &whole else {
        return Ok((whole?, None));
    };
    let Some(last) = contiguous(chunks).0.last().copied().cloned() else {
        return Ok((whole?, None));
    };
    // A chunk deleted while it was read (its segment archived, or merged into a larger
    // chunk by the receiver) is not a torn one: the caller lists the chunks again.
    if let Err(e) = repo.storage().head(&last.key).await {
        return match e.is_not_found() {
            true => Ok((whole?, None)),
            false => Err(e.into()),
        };
    }
    let rest: Vec<Chunk> = chunks.iter().filter(|c| **c != last).cloned().collect();
    match (read_prefix(repo, cluster, &rest).await, whole) {
        (Ok(prefix), Err(why)) => Ok((prefix, Some((last, why)))),
        (_, whole) => Ok((whole?, None)),
    }
}

/// The streamed tail of `segment`, as `archive-get` serves it: the durable prefix, padded
/// with zeros to the segment size like a `.partial` file of `pg_receivewal` (recovery reads up
/// to the last complete record and stops at the zeros). `None` when nothing was streamed for
/// it. Also returns how many bytes were streamed. A last chunk that does not open (torn by a
/// crash of the receiver's host before it was acknowledged, see
/// [`read_prefix_or_before_last`]) is left out, with an error in the log, as the receiver
/// sets it aside when it starts: a recovery before that restart still reaches every
/// acknowledged commit instead of stopping at an error.
pub async fn read_tail(
    repo: &Repository,
    cluster: &str,
    segment: &WalFileName,
    seg_size: u64,
) -> Result<Option<(Vec<u8>, u64)>> {
    // The receiver merges small chunks into larger ones and deletes them: a read that failed
    // while the listing changed lists and reads again.
    let mut attempts = 0;
    let read = loop {
        let chunks = list_segment(repo, cluster, segment).await?;
        if contiguous(&chunks).1 == 0 {
            return Ok(None);
        }
        match read_prefix_or_before_last(repo, cluster, &chunks).await {
            Err(e) if attempts < 3 && list_segment(repo, cluster, segment).await? != chunks => {
                tracing::debug!("a streamed chunk of {segment} went while read ({e}): again");
                attempts += 1;
            }
            read => break read?,
        }
    };
    let mut data = match read {
        (prefix, None) => prefix,
        // Nothing before it: no stream to serve, and a lone chunk that does not open is
        // not told apart from one put there by someone else.
        (prefix, Some((_, why))) if prefix.is_empty() => return Err(why),
        (prefix, Some((last, why))) => {
            tracing::error!(
                "the last streamed chunk {} of {segment} does not open ({why}): a crash during \
                 its write, before it was acknowledged; serving the {} bytes before it \
                 (wal-receive sets it aside when it starts)",
                last.key,
                prefix.len()
            );
            prefix
        }
    };
    let bytes = data.len() as u64;
    data.resize(seg_size as usize, 0);
    Ok(Some((data, bytes)))
}

/// Deletes chunks (after their segment is archived).
pub async fn remove(repo: &Repository, chunks: &[Chunk]) -> Result<()> {
    let keys: Vec<ObjectKey> = chunks.iter().map(|c| c.key.clone()).collect();
    remove_keys(repo, keys).await
}

/// Deletes chunk objects by key (after their segment is archived, or once merged).
pub async fn remove_keys(repo: &Repository, keys: Vec<ObjectKey>) -> Result<()> {
    let storage = repo.storage().clone();
    futures::stream::iter(keys)
        .map(|key| {
            let storage = storage.clone();
            async move { storage.delete(&key).await }
        })
        .buffer_unordered(READ_PARALLELISM)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::push::tests::memory_repo;

    fn chunk(start: u64, end: u64) -> Chunk {
        let segment = segment_name(1, 3, 16 << 20);
        Chunk {
            key: layout::walstream_chunk("main", &segment, start, end, &ContentId([0; 32])),
            segment,
            start,
            end,
            id: ContentId([0; 32]),
        }
    }

    #[test]
    fn the_durable_run_stops_at_the_first_hole() {
        let chunks = sort(vec![chunk(0, 10), chunk(10, 20), chunk(30, 40)]);
        let (run, end) = contiguous(&chunks);
        assert_eq!(end, 20);
        assert_eq!(run.len(), 2);
        // Overlaps (a second receiver, or a restart that re-sent) still form one run.
        let chunks = sort(vec![
            chunk(0, 10),
            chunk(5, 25),
            chunk(10, 20),
            chunk(25, 30),
        ]);
        assert_eq!(contiguous(&chunks).1, 30);
        assert_eq!(contiguous(&sort(vec![chunk(5, 10)])).1, 0, "no start at 0");
    }

    #[test]
    fn chunk_keys_round_trip_and_foreign_keys_are_ignored() {
        let segment = segment_name(2, 0x1_0000_0005, 16 << 20);
        let id = ContentId([7; 32]);
        let key = layout::walstream_chunk("main", &segment, 0x10, 0x2000, &id);
        assert_eq!(
            layout::parse_walstream_chunk("main", key.as_str()),
            Some((segment.clone(), 0x10, 0x2000, id))
        );
        assert!(layout::parse_walstream_chunk("other", key.as_str()).is_none());
        let bad = key.as_str().replace("00000002/", "00000003/");
        assert!(layout::parse_walstream_chunk("main", &bad).is_none());
        let empty = layout::walstream_chunk("main", &segment, 5, 5, &id);
        assert!(layout::parse_walstream_chunk("main", empty.as_str()).is_none());
    }

    #[tokio::test]
    async fn chunks_assemble_into_a_padded_tail_and_a_moved_chunk_does_not_open() {
        let (mem, repo) = memory_repo().await;
        let seg_size = 16 << 20;
        let segment = segment_name(1, 3, seg_size);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        commit_chunk(&repo, "main", &segment, 0, data[..40_000].to_vec())
            .await
            .unwrap();
        commit_chunk(&repo, "main", &segment, 40_000, data[40_000..].to_vec())
            .await
            .unwrap();
        let (tail, bytes) = read_tail(&repo, "main", &segment, seg_size)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(bytes, 100_000);
        assert_eq!(tail.len() as u64, seg_size);
        assert!(tail[..100_000] == data[..]);
        assert!(tail[100_000..].iter().all(|&b| b == 0));
        let other = segment_name(1, 4, seg_size);
        assert!(read_tail(&repo, "main", &other, seg_size)
            .await
            .unwrap()
            .is_none());

        // A chunk copied under another segment's name fails authentication.
        let chunks = list_segment(&repo, "main", &segment).await.unwrap();
        let sealed = {
            use crate::storage::Storage;
            mem.get(&chunks[0].key).await.unwrap()
        };
        let moved = layout::walstream_chunk("main", &other, 0, 40_000, &chunks[0].id);
        repo.storage().put_create(&moved, sealed).await.unwrap();
        let err = read_tail(&repo, "main", &other, seg_size)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");

        // A torn last chunk (a crash during its write, never acknowledged): the tail is
        // served up to it; a damaged chunk before the last is still an error.
        {
            use crate::storage::Storage;
            let tear = |key: &ObjectKey| {
                let (mem, key) = (mem.clone(), key.clone());
                async move {
                    mem.delete(&key).await.unwrap();
                    mem.put_create(&key, bytes::Bytes::from_static(b"torn"))
                        .await
                        .unwrap();
                }
            };
            tear(&chunks[1].key).await;
            let (tail, bytes) = read_tail(&repo, "main", &segment, seg_size)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(bytes, 40_000);
            assert!(tail[..40_000] == data[..40_000]);
            assert!(tail[40_000..].iter().all(|&b| b == 0));
            tear(&chunks[0].key).await;
            let err = read_tail(&repo, "main", &segment, seg_size)
                .await
                .unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        }

        // A last chunk that went while it was read (merged by the receiver into a larger
        // one) is not taken for a torn one: no shorter tail from the old listing, and a new
        // listing reads the merged chunk.
        {
            use crate::storage::Storage;
            let seg = segment_name(1, 9, seg_size);
            commit_chunk(&repo, "main", &seg, 0, data[..1000].to_vec())
                .await
                .unwrap();
            commit_chunk(&repo, "main", &seg, 1000, data[1000..1500].to_vec())
                .await
                .unwrap();
            let listed = list_segment(&repo, "main", &seg).await.unwrap();
            commit_chunk(&repo, "main", &seg, 0, data[..1500].to_vec())
                .await
                .unwrap();
            mem.delete(&listed[1].key).await.unwrap();
            assert!(read_prefix_or_before_last(&repo, "main", &listed)
                .await
                .is_err());
            let (tail, bytes) = read_tail(&repo, "main", &seg, seg_size)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(bytes, 1500);
            assert!(tail[..1500] == data[..1500]);
        }

        remove(&repo, &chunks).await.unwrap();
        assert!(read_tail(&repo, "main", &segment, seg_size)
            .await
            .unwrap()
            .is_none());
    }
}
