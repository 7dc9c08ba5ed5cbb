//! Envelope version 2: a body of independently sealed chunks, so one large object (a WAL
//! segment) is hashed, compressed and encrypted, and later authenticated and decompressed, on
//! every core.
//!
//! Why: with version 1 a segment's compression ran in parallel but its encryption (one AEAD
//! message) and decompression did not, and on a segment of busy OLTP WAL those serial steps
//! took about 6 ms of a 45 ms archive-push. Version 2 cuts the input into
//! [`PART_LEN`](super::tree_hash::PART_LEN) parts; each becomes one chunk.
//!
//! ```text
//! header (36 bytes, as version 1, version byte = 2)
//! chunk*:  payload length (u32 LE) || plain length (u32 LE) || payload || tag
//! ```
//!
//! - The payload is the part's zstd frame when the header says compressed, else the part.
//!   The plain length is the part's size (at most `PART_LEN`).
//! - The tag is the 16-byte Poly1305 tag (the payload is then ciphertext) or, in
//!   unencrypted repositories, a 32-byte keyed-BLAKE3 checksum.
//! - Chunk `i`'s nonce is the header's nonce with `i` (u32 LE) XORed into bytes 0..4 and, on
//!   the last chunk, 1 XORed into byte 4. Nonces therefore never repeat within an object;
//!   across objects the 192-bit random base keeps them apart.
//! - Chunk `i`'s associated data is the object's (header, repository id, content id, context)
//!   followed by `i`, the last-chunk flag and the chunk's two lengths. Reordered, dropped,
//!   duplicated or truncated chunks, altered lengths, and chunks spliced in from another
//!   object all fail authentication. There is always at least one chunk (the last).
//!
//! Opening handles one chunk per task: authenticate, decompress into at most one part, hash,
//! hand the part to a sink (archive-get writes it into a temp file; opening into memory
//! appends it to a buffer that grows only with authenticated parts). The caller discards
//! everything when any chunk fails.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rayon::prelude::*;

use super::compression::{compress_part, worth_it};
use super::tree_hash::{self, PART_LEN};
use super::{
    checksum, constant_time_eq, Codec, CodecError, ObjectKind, OpenToError, CHECKSUM_LEN,
    HEADER_LEN, TAG_LEN,
};
use crate::crypto::ContentId;

/// The envelope version of chunked objects.
pub const VERSION: u8 = 2;
const CHUNK_HEADER_LEN: usize = 8;

pub(super) fn chunk_nonce(base: &[u8], index: u32, last: bool) -> XNonce {
    let mut n = [0u8; 24];
    n.copy_from_slice(base);
    for (b, x) in n[..4].iter_mut().zip(index.to_le_bytes()) {
        *b ^= x;
    }
    n[4] ^= u8::from(last);
    n.into()
}

pub(super) fn chunk_aad(object_aad: &[u8], index: u32, last: bool, lengths: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(object_aad.len() + 5 + CHUNK_HEADER_LEN);
    aad.extend_from_slice(object_aad);
    aad.extend_from_slice(&index.to_le_bytes());
    aad.push(u8::from(last));
    aad.extend_from_slice(lengths);
    aad
}

/// One chunk of a body being opened, as read from the envelope (not yet authenticated).
pub(super) struct RawChunk<'a> {
    pub(super) lengths: &'a [u8],
    plain_len: usize,
    payload: &'a [u8],
    tag: &'a [u8],
}

impl Codec {
    fn tag_len(&self) -> usize {
        if self.encrypted {
            TAG_LEN
        } else {
            CHECKSUM_LEN
        }
    }

    /// Hashes, compresses (zstd at `level`, 0 = never) and seals `data` on every core.
    /// Returns the keyed content id of `data` and the sealed object (envelope version 2).
    pub fn seal_parallel(
        &self,
        kind: ObjectKind,
        context: &[u8],
        data: &[u8],
        level: i32,
    ) -> (ContentId, Vec<u8>) {
        let id_key = &self.ids.id_key;
        let parts: Vec<&[u8]> = if data.is_empty() {
            vec![data]
        } else {
            data.chunks(PART_LEN).collect()
        };
        // Phase 1: each part is hashed and compressed by the same task, while in cache.
        let (hashes, frames): (Vec<_>, Vec<_>) = parts
            .par_iter()
            .enumerate()
            .map(|(i, part)| {
                let hash = tree_hash::hash_part(id_key, data.len(), i, part);
                let frame = (level != 0)
                    .then(|| compress_part(kind, level, part))
                    .flatten();
                (hash, frame)
            })
            .unzip();
        let id = tree_hash::merge(id_key, data.len(), &hashes);
        let frames: Option<Vec<Vec<u8>>> = frames.into_iter().collect();
        let frames = frames.filter(|f| worth_it(f.iter().map(Vec::len).sum(), data.len()));
        let payloads: Vec<&[u8]> = match &frames {
            Some(f) => f.iter().map(Vec::as_slice).collect(),
            None => parts.clone(),
        };
        // Phase 2: every chunk is written and sealed in place in its slot of the output.
        let tag_len = self.tag_len();
        let total: usize = payloads
            .iter()
            .map(|p| CHUNK_HEADER_LEN + p.len() + tag_len)
            .sum();
        let mut out = vec![0u8; HEADER_LEN + total];
        let (header, mut rest) = out.split_at_mut(HEADER_LEN);
        let key = self.write_header(header, kind, VERSION, frames.is_some());
        let header: &[u8] = header;
        let object_aad = self.aad(header, &id, context);
        let mut slots = Vec::with_capacity(payloads.len());
        for p in &payloads {
            let (slot, tail) = rest.split_at_mut(CHUNK_HEADER_LEN + p.len() + tag_len);
            slots.push(slot);
            rest = tail;
        }
        let count = payloads.len();
        slots
            .into_par_iter()
            .zip(payloads.par_iter().zip(parts.par_iter()))
            .enumerate()
            .for_each(|(i, (slot, (payload, part)))| {
                let last = i + 1 == count;
                let (lengths, rest) = slot.split_at_mut(CHUNK_HEADER_LEN);
                lengths[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
                lengths[4..].copy_from_slice(&(part.len() as u32).to_le_bytes());
                let aad = chunk_aad(&object_aad, i as u32, last, lengths);
                let (body, tag) = rest.split_at_mut(payload.len());
                body.copy_from_slice(payload);
                if self.encrypted {
                    let t = XChaCha20Poly1305::new((&key).into())
                        .encrypt_in_place_detached(
                            &chunk_nonce(&header[12..36], i as u32, last),
                            &aad,
                            body,
                        )
                        .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
                    tag.copy_from_slice(&t);
                } else {
                    tag.copy_from_slice(&checksum(&key, &aad, body));
                }
            });
        (id, out)
    }

    /// Authenticates (and decrypts) chunk `index` of `count`; returns its payload in clear.
    pub(super) fn open_chunk(
        &self,
        key: &[u8; 32],
        header: &[u8],
        object_aad: &[u8],
        (index, count): (usize, usize),
        chunk: &RawChunk,
    ) -> Result<Vec<u8>, CodecError> {
        let last = index + 1 == count;
        let aad = chunk_aad(object_aad, index as u32, last, chunk.lengths);
        let mut buf = chunk.payload.to_vec();
        if self.encrypted {
            XChaCha20Poly1305::new(key.into())
                .decrypt_in_place_detached(
                    &chunk_nonce(&header[12..36], index as u32, last),
                    &aad,
                    &mut buf,
                    chunk.tag.into(),
                )
                .map_err(|_| CodecError::Authentication)?;
        } else if !constant_time_eq(&checksum(key, &aad, &buf), chunk.tag) {
            return Err(CodecError::Authentication);
        }
        Ok(buf)
    }

    /// Turns an authenticated payload into the part's plaintext, written into `out` (exactly
    /// the chunk's plain length).
    fn unpack_chunk(compressed: bool, payload: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
        if compressed {
            match zstd::bulk::decompress_to_buffer(payload, out) {
                Ok(n) if n == out.len() => Ok(()),
                Ok(n) => Err(CodecError::Decompress(format!(
                    "a chunk decompressed to {n} bytes, its header says {}",
                    out.len()
                ))),
                Err(e) => Err(CodecError::Decompress(e.to_string())),
            }
        } else if payload.len() == out.len() {
            out.copy_from_slice(payload);
            Ok(())
        } else {
            Err(CodecError::Malformed("stored chunk length mismatch".into()))
        }
    }

    /// Opens a version 2 body into `sink`, one part per task: authenticate, decompress into a
    /// buffer of at most one part, hash it (a BLAKE3 subtree), hand it to the sink. Returns the
    /// length and content id of the whole plaintext.
    pub(super) fn open_chunked_to(
        &self,
        key: &[u8; 32],
        header: &[u8],
        object_aad: &[u8],
        body: &[u8],
        sink: &(dyn Fn(u64, &[u8]) -> std::io::Result<()> + Sync),
    ) -> Result<(u64, ContentId), OpenToError> {
        let chunks = self.split_chunks(body)?;
        let count = chunks.len();
        let compressed = header[6] == 1;
        let total: usize = chunks.iter().map(|c| c.plain_len).sum();
        // Only the last chunk may be short: the parts are PART_LEN apart.
        if chunks[..count - 1].iter().any(|c| c.plain_len != PART_LEN) {
            return Err(CodecError::Malformed(
                "a chunk before the last is not a whole part".into(),
            )
            .into());
        }
        let id_key = &self.ids.id_key;
        let hashes = chunks
            .par_iter()
            .enumerate()
            .map(|(i, c)| {
                let payload = self.open_chunk(key, header, object_aad, (i, count), c)?;
                let mut part = vec![0u8; c.plain_len];
                Self::unpack_chunk(compressed, &payload, &mut part)?;
                drop(payload);
                let hash = tree_hash::hash_part(id_key, total, i, &part);
                sink((i * PART_LEN) as u64, &part).map_err(OpenToError::Sink)?;
                Ok(hash)
            })
            .collect::<Result<Vec<_>, OpenToError>>()?;
        Ok((total as u64, tree_hash::merge(id_key, total, &hashes)))
    }

    /// Opens a version 2 body into memory: each authenticated part lands at its offset in a
    /// buffer that grows only as far as parts have arrived.
    pub(super) fn open_chunked_to_vec(
        &self,
        key: &[u8; 32],
        header: &[u8],
        object_aad: &[u8],
        body: &[u8],
    ) -> Result<(Vec<u8>, ContentId), CodecError> {
        let out = std::sync::Mutex::new(Vec::new());
        let sink = |offset: u64, bytes: &[u8]| {
            let start = offset as usize;
            let mut out = out.lock().expect("output lock");
            if out.len() < start + bytes.len() {
                out.resize(start + bytes.len(), 0);
            }
            out[start..start + bytes.len()].copy_from_slice(bytes);
            Ok(())
        };
        let (_, id) = self
            .open_chunked_to(key, header, object_aad, body, &sink)
            .map_err(|e| match e {
                OpenToError::Codec(e) => e,
                OpenToError::Sink(e) => unreachable!("a memory sink does not fail: {e}"),
            })?;
        Ok((out.into_inner().expect("output lock"), id))
    }

    pub(super) fn split_chunks<'a>(
        &self,
        mut body: &'a [u8],
    ) -> Result<Vec<RawChunk<'a>>, CodecError> {
        let tag_len = self.tag_len();
        let mut chunks = Vec::new();
        while !body.is_empty() {
            if body.len() < CHUNK_HEADER_LEN {
                return Err(CodecError::Malformed("truncated chunk header".into()));
            }
            let (lengths, rest) = body.split_at(CHUNK_HEADER_LEN);
            let payload_len =
                u32::from_le_bytes(lengths[..4].try_into().expect("4 bytes")) as usize;
            let plain_len = u32::from_le_bytes(lengths[4..].try_into().expect("4 bytes")) as usize;
            if plain_len > PART_LEN || rest.len() < payload_len + tag_len {
                return Err(CodecError::Malformed(format!(
                    "chunk {} claims {payload_len} stored and {plain_len} plain bytes, {} remain",
                    chunks.len(),
                    rest.len()
                )));
            }
            let (payload, rest) = rest.split_at(payload_len);
            let (tag, rest) = rest.split_at(tag_len);
            chunks.push(RawChunk {
                lengths,
                plain_len,
                payload,
                tag,
            });
            body = rest;
        }
        if chunks.is_empty() {
            return Err(CodecError::Malformed("no chunks".into()));
        }
        Ok(chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::codec;
    use rand::RngCore;

    /// Byte ranges of the chunks of a sealed object (each: lengths, payload, tag).
    fn chunk_ranges(c: &Codec, sealed: &[u8]) -> Vec<std::ops::Range<usize>> {
        let mut pos = HEADER_LEN;
        let mut out = Vec::new();
        while pos < sealed.len() {
            let len = u32::from_le_bytes(sealed[pos..pos + 4].try_into().unwrap()) as usize;
            let end = pos + CHUNK_HEADER_LEN + len + c.tag_len();
            out.push(pos..end);
            pos = end;
        }
        out
    }

    fn wal_like(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| ((i / 700) % 13) as u8 ^ (i % 5) as u8)
            .collect()
    }

    #[test]
    fn round_trips_every_size_and_protection_with_the_one_shot_content_id() {
        let mut random = vec![0u8; 2 * PART_LEN + 77];
        rand::rngs::OsRng.fill_bytes(&mut random);
        for encrypted in [true, false] {
            let c = codec(encrypted);
            for data in [
                Vec::new(),
                b"x".to_vec(),
                wal_like(PART_LEN),
                wal_like(3 * PART_LEN + 5),
                wal_like(16 << 20),
                random.clone(),
            ] {
                for level in [0, 1, -1] {
                    let (id, sealed) = c.seal_parallel(ObjectKind::Wal, b"name", &data, level);
                    assert_eq!(id, c.content_id(&data), "len {}", data.len());
                    assert_eq!(sealed[4], VERSION);
                    let opened = c.open(ObjectKind::Wal, &id, b"name", &sealed).unwrap();
                    assert!(
                        opened == data,
                        "len {} level {level} encrypted {encrypted}",
                        data.len()
                    );
                    let chunks = chunk_ranges(&c, &sealed).len();
                    assert_eq!(chunks, data.len().div_ceil(PART_LEN).max(1));
                }
            }
            let (_, sealed) = c.seal_parallel(ObjectKind::Wal, b"n", &wal_like(16 << 20), -1);
            assert!(sealed.len() < (16 << 20) / 10, "WAL-like data compresses");
            assert_eq!(sealed[6], 1);
            let (_, sealed) = c.seal_parallel(ObjectKind::Wal, b"n", &random, -1);
            assert_eq!(sealed[6], 0, "random data is stored");
        }
    }

    #[test]
    fn reordered_dropped_duplicated_or_altered_chunks_fail_authentication() {
        for encrypted in [true, false] {
            let c = codec(encrypted);
            let data = wal_like(3 * PART_LEN + 100);
            let (id, sealed) = c.seal_parallel(ObjectKind::Wal, b"seg", &data, -1);
            let r = chunk_ranges(&c, &sealed);
            assert_eq!(r.len(), 4);
            let rebuild = |order: &[usize]| {
                let mut v = sealed[..HEADER_LEN].to_vec();
                for &i in order {
                    v.extend_from_slice(&sealed[r[i].clone()]);
                }
                v
            };
            let fails = |bad: &[u8]| {
                matches!(
                    c.open(ObjectKind::Wal, &id, b"seg", bad),
                    Err(CodecError::Authentication)
                )
            };
            assert!(fails(&rebuild(&[1, 0, 2, 3])), "swapped");
            assert!(fails(&rebuild(&[0, 1, 2])), "last dropped");
            assert!(fails(&rebuild(&[0, 1, 3])), "middle dropped");
            assert!(fails(&rebuild(&[0, 1, 2, 2, 3])), "duplicated");
            assert!(
                !fails(&rebuild(&[0, 1, 2, 3])),
                "the rebuild itself is sound"
            );
            if encrypted {
                // A chunk spliced in from another sealing of the same name and content.
                let (_, other) = c.seal_parallel(ObjectKind::Wal, b"seg", &data, -1);
                let mut spliced = sealed.clone();
                spliced[r[1].clone()].copy_from_slice(&other[r[1].clone()]);
                assert!(fails(&spliced), "spliced");
            }
            // Altered plain length (lengths are authenticated), payload and tag.
            for pos in [r[2].start + 5, r[2].start + 20, r[3].end - 1] {
                let mut bad = sealed.clone();
                bad[pos] ^= 1;
                assert!(
                    c.open(ObjectKind::Wal, &id, b"seg", &bad).is_err(),
                    "flip at {pos} detected"
                );
            }
            // Truncation anywhere.
            for cut in [HEADER_LEN, HEADER_LEN + 3, r[1].start, r[3].end - 1] {
                assert!(
                    c.open(ObjectKind::Wal, &id, b"seg", &sealed[..cut])
                        .is_err(),
                    "cut at {cut} detected"
                );
            }
            // Another name.
            assert!(matches!(
                c.open(ObjectKind::Wal, &id, b"other", &sealed),
                Err(CodecError::Authentication)
            ));
        }
    }

    #[test]
    fn opening_into_a_sink_delivers_every_byte_and_the_content_id() {
        use std::sync::Mutex;
        for encrypted in [true, false] {
            let c = codec(encrypted);
            for len in [0, 10, PART_LEN, 3 * PART_LEN + 7] {
                let data = wal_like(len);
                let (id, sealed) = c.seal_parallel(ObjectKind::Wal, b"n", &data, -1);
                let out = Mutex::new(vec![0u8; len]);
                let sink = |off: u64, bytes: &[u8]| {
                    let off = off as usize;
                    out.lock().unwrap()[off..off + bytes.len()].copy_from_slice(bytes);
                    Ok(())
                };
                let (n, got) = c
                    .open_to(ObjectKind::Wal, &id, b"n", &sealed, &sink)
                    .unwrap();
                assert_eq!((n as usize, got), (len, id));
                assert!(out.into_inner().unwrap() == data, "len {len}");
            }
        }
        let c = codec(true);
        let data = wal_like(2 * PART_LEN);
        let (id, sealed) = c.seal_parallel(ObjectKind::Wal, b"n", &data, -1);
        let failing = |_: u64, _: &[u8]| Err(std::io::Error::other("disk full"));
        assert!(matches!(
            c.open_to(ObjectKind::Wal, &id, b"n", &sealed, &failing),
            Err(OpenToError::Sink(_))
        ));
        let mut bad = sealed.clone();
        let n = bad.len();
        bad[n - 5] ^= 1;
        let ignore = |_: u64, _: &[u8]| Ok(());
        assert!(matches!(
            c.open_to(ObjectKind::Wal, &id, b"n", &bad, &ignore),
            Err(OpenToError::Codec(CodecError::Authentication))
        ));
    }

    #[test]
    fn oversized_chunk_lengths_are_refused_before_allocating() {
        let c = codec(true);
        let data = wal_like(PART_LEN + 1);
        let (id, mut sealed) = c.seal_parallel(ObjectKind::Wal, b"n", &data, -1);
        sealed[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            c.open(ObjectKind::Wal, &id, b"n", &sealed),
            Err(CodecError::Malformed(_))
        ));
    }
}
