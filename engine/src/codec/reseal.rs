//! Resealing: the same object, sealed again under the codec's write epoch.
//!
//! `key rotate --reencrypt` must take every object away from old key material without
//! changing what the object is: its kind, content id, name binding, compression, envelope
//! version and *size* stay as they were (a WAL record states its data object's sealed size;
//! a pack's index entries state its blocks' sealed lengths). So a reseal authenticates and
//! decrypts the body under the old epoch's key, keeps the (still compressed) payload, and
//! encrypts it again under the write epoch's key with a fresh nonce. Nothing is decompressed
//! or recompressed; a chunked (version 2) envelope keeps its chunks and their lengths.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::XChaCha20Poly1305;

use super::chunked::{chunk_aad, chunk_nonce, VERSION as CHUNKED};
use super::{checksum, Codec, CodecError, ObjectKind, HEADER_LEN};
use crate::crypto::ContentId;

impl Codec {
    /// True when `sealed` names a key epoch older than the write epoch (it needs a reseal).
    pub fn needs_reseal(&self, sealed: &[u8]) -> bool {
        Self::epoch_of(sealed).is_some_and(|e| e < self.write_epoch())
    }

    /// Opens `sealed` (kind, id and context as it was written) and seals the same payload
    /// again under the write epoch: same envelope version, compression and size.
    pub fn reseal(
        &self,
        kind: ObjectKind,
        id: &ContentId,
        context: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, CodecError> {
        let (old_key, old_aad) = self.check_header(kind, id, context, sealed)?;
        let (old_header, body) = sealed.split_at(HEADER_LEN);
        let compressed = old_header[6] == 1;
        if old_header[4] != CHUNKED {
            let payload = self.authenticate_single(&old_key, old_header, &old_aad, body)?;
            let mut out = Vec::with_capacity(sealed.len());
            out.extend_from_slice(&[0u8; HEADER_LEN]);
            out.extend_from_slice(&payload);
            return Ok(self.seal_prepared(kind, id, context, out, compressed));
        }
        let chunks = self.split_chunks(body)?;
        let count = chunks.len();
        let mut out = vec![0u8; HEADER_LEN];
        let key = self.write_header(&mut out[..HEADER_LEN], kind, CHUNKED, compressed);
        let new_aad = self.aad(&out[..HEADER_LEN], id, context);
        let nonce_base: [u8; 24] = out[12..36].try_into().expect("24 bytes");
        out.reserve(sealed.len());
        for (i, c) in chunks.iter().enumerate() {
            let last = i + 1 == count;
            let mut payload = self.open_chunk(&old_key, old_header, &old_aad, (i, count), c)?;
            let aad = chunk_aad(&new_aad, i as u32, last, c.lengths);
            out.extend_from_slice(c.lengths);
            if self.encrypted {
                let tag = XChaCha20Poly1305::new((&key).into())
                    .encrypt_in_place_detached(
                        &chunk_nonce(&nonce_base, i as u32, last),
                        &aad,
                        &mut payload,
                    )
                    .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
                out.extend_from_slice(&payload);
                out.extend_from_slice(&tag);
            } else {
                let sum = checksum(&key, &aad, &payload);
                out.extend_from_slice(&payload);
                out.extend_from_slice(&sum);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Keyring, MasterSecret, RepoKeys};

    fn codecs() -> (Codec, Codec) {
        let master = MasterSecret::from_bytes([3; 32]);
        let mut ring = Keyring::initial(&master);
        let old = Codec::new("r", RepoKeys::from_keyring(&ring), true, 1);
        ring.rotate();
        let new = Codec::new("r", RepoKeys::from_keyring(&ring), true, 2);
        (old, new)
    }

    #[test]
    fn resealed_objects_keep_their_size_and_open_only_under_the_new_epoch() {
        let (old, new) = codecs();
        let text = b"some wal ".repeat(300_000);
        // One piece, compressed and not, and chunked.
        let id = old.content_id(&text);
        let one = old.seal(ObjectKind::Wal, &id, b"ctx", &text, 3);
        let raw = old.seal(ObjectKind::Manifest, &id, b"ctx", b"tiny", 0);
        let (cid, chunked) = old.seal_parallel(ObjectKind::Wal, b"ctx", &text, 1);
        assert_eq!(cid, id);
        for (kind, sealed, plain) in [
            (ObjectKind::Wal, &one, text.as_slice()),
            (ObjectKind::Manifest, &raw, b"tiny".as_slice()),
            (ObjectKind::Wal, &chunked, text.as_slice()),
        ] {
            assert!(new.needs_reseal(sealed));
            let again = new.reseal(kind, &id, b"ctx", sealed).unwrap();
            assert_eq!(again.len(), sealed.len(), "same size");
            assert_eq!(Codec::epoch_of(&again), Some(2));
            assert!(!new.needs_reseal(&again));
            assert_eq!(new.open(kind, &id, b"ctx", &again).unwrap(), plain);
            assert_eq!(
                old.open(kind, &id, b"ctx", &again),
                Err(CodecError::UnknownKeyEpoch(2)),
                "the old keys open nothing resealed"
            );
            // Bound as before: another name does not open it.
            assert_eq!(
                new.open(kind, &id, b"other", &again),
                Err(CodecError::Authentication)
            );
        }
        // A damaged object is not resealed (its damage is not laundered).
        let mut bad = one.clone();
        let n = bad.len();
        bad[n - 20] ^= 1;
        assert_eq!(
            new.reseal(ObjectKind::Wal, &id, b"ctx", &bad),
            Err(CodecError::Authentication)
        );
        let mut bad = chunked.clone();
        bad[HEADER_LEN + 20] ^= 1;
        assert!(new.reseal(ObjectKind::Wal, &id, b"ctx", &bad).is_err());
    }
}
