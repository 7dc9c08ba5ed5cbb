//! Streamed sealing and opening of large metadata objects (manifests).
//!
//! Same envelope as everything else (version 1, one piece), but the plaintext is never held
//! whole. Sealing: the caller writes the plaintext into a zstd stream whose output buffer
//! already reserves the header, and the compressed body is then encrypted in place. Opening:
//! the object's own buffer is authenticated and decrypted in place, and the caller reads the
//! plaintext through a zstd stream. So a manifest of a million files and sixteen million
//! blocks costs its compressed size once (about 35 bytes per block), not its JSON (67 bytes
//! per block) plus copies of both.

use std::io::{self, Cursor, Read, Write};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::{
    checksum, constant_time_eq, Codec, CodecError, ObjectKind, CHECKSUM_LEN, HEADER_LEN, TAG_LEN,
};
use crate::crypto::ContentId;

/// The plaintext of an opened object, read as a stream.
pub type PlainReader = Box<dyn Read + Send>;

impl Codec {
    /// Seals what `write` produces, compressed at `level` (always compressed: the callers'
    /// plaintext is JSON). Only the compressed body is ever in memory.
    pub fn seal_streamed(
        &self,
        kind: ObjectKind,
        id: &ContentId,
        context: &[u8],
        level: i32,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<Vec<u8>> {
        let mut encoder = zstd::stream::write::Encoder::new(vec![0u8; HEADER_LEN], level)?;
        {
            // The serialisers write a few bytes at a time; zstd wants larger pieces.
            let mut buffered = io::BufWriter::with_capacity(64 << 10, &mut encoder);
            write(&mut buffered)?;
            buffered.flush()?;
        }
        let body = encoder.finish()?;
        Ok(self.seal_prepared(kind, id, context, body, true))
    }

    /// Authenticates `sealed` (decrypting it in place) and returns a reader of its plaintext.
    /// Nothing is readable unless the whole object authenticated first.
    pub fn open_streamed(
        &self,
        kind: ObjectKind,
        id: &ContentId,
        context: &[u8],
        mut sealed: Vec<u8>,
    ) -> Result<PlainReader, CodecError> {
        let (key, aad) = self.check_header(kind, id, context, &sealed)?;
        if sealed[4] != super::VERSION {
            // Chunked envelopes open part by part into memory (only WAL is sealed that way).
            let (header, body) = sealed.split_at(HEADER_LEN);
            let (plain, _) = self.open_chunked_to_vec(&key, header, &aad, body)?;
            return Ok(Box::new(Cursor::new(plain)));
        }
        let compressed = sealed[6];
        if self.encrypted {
            if sealed.len() < HEADER_LEN + TAG_LEN {
                return Err(CodecError::Malformed("shorter than its tag".into()));
            }
            let tag_at = sealed.len() - TAG_LEN;
            let tag: [u8; TAG_LEN] = sealed[tag_at..].try_into().expect("tag length");
            let nonce = *XNonce::from_slice(&sealed[12..36]);
            XChaCha20Poly1305::new((&key).into())
                .decrypt_in_place_detached(
                    &nonce,
                    &aad,
                    &mut sealed[HEADER_LEN..tag_at],
                    (&tag).into(),
                )
                .map_err(|_| CodecError::Authentication)?;
            sealed.truncate(tag_at);
        } else {
            if sealed.len() < HEADER_LEN + CHECKSUM_LEN {
                return Err(CodecError::Malformed("shorter than its checksum".into()));
            }
            let sum_at = sealed.len() - CHECKSUM_LEN;
            let expected = checksum(&key, &aad, &sealed[HEADER_LEN..sum_at]);
            if !constant_time_eq(&expected, &sealed[sum_at..]) {
                return Err(CodecError::Authentication);
            }
            sealed.truncate(sum_at);
        }
        let mut body = Cursor::new(sealed);
        body.set_position(HEADER_LEN as u64);
        match compressed {
            0 => Ok(Box::new(body)),
            1 => {
                let decoder = zstd::stream::read::Decoder::with_buffer(body)
                    .map_err(|e| CodecError::Decompress(e.to_string()))?;
                // Callers (serde_json) read a byte at a time; decode in larger pieces.
                Ok(Box::new(io::BufReader::with_capacity(64 << 10, decoder)))
            }
            other => Err(CodecError::Malformed(format!(
                "unknown compression {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::codec;
    use super::*;

    fn read_all(mut r: PlainReader) -> Vec<u8> {
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn streamed_objects_open_both_ways_and_detect_damage() {
        for encrypted in [true, false] {
            let c = codec(encrypted);
            let id = ContentId([0; 32]);
            let plain: Vec<u8> = (0..300_000u32)
                .flat_map(|i| format!("\"{:064x}\",", i * 7919).into_bytes())
                .collect();
            let sealed = c
                .seal_streamed(ObjectKind::Manifest, &id, b"c/b", 3, |w| {
                    w.write_all(&plain)
                })
                .unwrap();
            assert!(sealed.len() < plain.len() / 2, "compressed");
            // The streamed form is an ordinary envelope, and ordinary envelopes stream.
            assert_eq!(
                c.open(ObjectKind::Manifest, &id, b"c/b", &sealed).unwrap(),
                plain
            );
            let one_piece = c.seal(ObjectKind::Manifest, &id, b"c/b", &plain, 3);
            for s in [&sealed, &one_piece] {
                let r = c
                    .open_streamed(ObjectKind::Manifest, &id, b"c/b", s.clone())
                    .unwrap();
                assert_eq!(read_all(r), plain);
            }
            let mut bad = sealed.clone();
            let mid = bad.len() / 2;
            bad[mid] ^= 1;
            assert_eq!(
                c.open_streamed(ObjectKind::Manifest, &id, b"c/b", bad)
                    .err(),
                Some(CodecError::Authentication)
            );
            assert_eq!(
                c.open_streamed(ObjectKind::Manifest, &id, b"c/other", sealed.clone())
                    .err(),
                Some(CodecError::Authentication)
            );
            assert!(c
                .open_streamed(ObjectKind::Manifest, &id, b"c/b", sealed[..20].to_vec())
                .is_err());
        }
    }
}
