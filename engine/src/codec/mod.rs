//! The sealed-object envelope: how every stored object's bytes are laid out.
//!
//! ```text
//! offset size  field
//! 0      4     magic "PGCA"
//! 4      1     envelope version (1: one piece; 2: chunked, see `chunked`)
//! 5      1     object kind (see ObjectKind)
//! 6      1     compression: 0 none, 1 zstd
//! 7      1     protection: 0 keyed-BLAKE3 checksum (unencrypted repository),
//!                          1 XChaCha20-Poly1305
//! 8      4     key epoch (u32 LE): whose keys sealed it (see `crypto::keyring`); objects
//!              written before `key rotate` existed say 1
//! 12     24    nonce (random per object; zero when protection = 0)
//! 36     ..    version 1 body: ciphertext || 16-byte Poly1305 tag,
//!                              or plaintext || 32-byte checksum
//!              version 2 body: chunks, each sealed on its own (see `chunked`)
//! ```
//!
//! The associated data is `header(36) || repo id || content id(32) || context`, where the
//! context names what the object claims to be (for WAL: cluster and file name). A sealed
//! object therefore cannot be replayed into another repository, under another kind, another
//! content id or another name: it fails authentication instead of being mislabelled.
//!
//! Compression happens before encryption and is skipped when it does not save at least
//! 1/32 of the size (random data, already-compressed files).
//!
//! Small objects (blocks, manifests, index segments) are sealed in one piece. Large ones on
//! the latency path (WAL segments) use version 2, whose parts are hashed, compressed,
//! encrypted and opened on every core. Manifests, which grow with the database, are written
//! and read as streams (see `streamed`) so their plaintext is never in memory whole.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

use std::sync::{Arc, RwLock};

use crate::crypto::{ContentId, KeyUse, RepoKeys};

mod chunked;
pub mod compression;
mod reseal;
mod streamed;
pub mod tree_hash;

pub use streamed::PlainReader;

const MAGIC: &[u8; 4] = b"PGCA";
/// The envelope version of objects sealed in one piece.
const VERSION: u8 = 1;
/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 36;
const TAG_LEN: usize = 16;
const CHECKSUM_LEN: usize = 32;

/// What an object is; part of its authenticated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ObjectKind {
    /// A WAL segment, partial segment, history or backup history file.
    Wal = 1,
    /// A data block of a base backup.
    Block = 2,
    /// The trailer of a pack object.
    PackTrailer = 3,
    /// An index segment.
    Index = 4,
    /// A backup manifest.
    Manifest = 5,
    /// A drill report or other metadata document.
    Document = 6,
    /// A catalog document (WAL record, cluster record, pin, restore point, gc state,
    /// catalog head): see `store::sealed`, which binds each to its object key.
    Catalog = 7,
}

impl ObjectKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => ObjectKind::Wal,
            2 => ObjectKind::Block,
            3 => ObjectKind::PackTrailer,
            4 => ObjectKind::Index,
            5 => ObjectKind::Manifest,
            6 => ObjectKind::Document,
            7 => ObjectKind::Catalog,
            _ => return None,
        })
    }
}

/// Why an envelope did not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// Too short or wrong magic/version: not one of our objects, or truncated.
    #[error("not a pgcairn object or truncated ({0})")]
    Malformed(String),
    /// The header says another kind than expected.
    #[error("object kind mismatch: expected {expected:?}, found {found}")]
    WrongKind { expected: ObjectKind, found: u8 },
    /// Authentication (or checksum) failed: altered, damaged, or sealed under another
    /// key, repository, id or name.
    #[error("authentication failed: the object was altered, damaged, or belongs to another repository, key or name")]
    Authentication,
    /// Decompression failed after authentication (should not happen).
    #[error("decompression failed: {0}")]
    Decompress(String),
    /// Sealed under a key epoch the keyring does not hold.
    #[error("sealed under key epoch {0}, which this repository's keyring does not hold (dropped by `key rotate --reencrypt`, or the config was replaced by an older one)")]
    UnknownKeyEpoch(u32),
    /// The repository is encrypted but the object is not, or the reverse.
    #[error("protection mismatch: object protection {found}, repository expects {expected}")]
    Protection { expected: u8, found: u8 },
}

/// Why [`Codec::open_to`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenToError {
    /// The envelope did not open.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The sink failed (writing the plaintext out).
    #[error("writing the opened object: {0}")]
    Sink(std::io::Error),
}

/// Seals and opens envelopes for one repository.
///
/// Clones share their keys: when a running process learns of a `key rotate` (see
/// [`crate::repo::follow`]), [`Codec::adopt`] gives every clone the new epoch at once, to
/// open what is sealed under it and to seal what is written from then on. Each seal reads
/// the write epoch and its key together, once, so a header never names another epoch than
/// the key that sealed it.
#[derive(Debug, Clone)]
pub struct Codec {
    repo_id: Vec<u8>,
    /// The content-id key, which no rotation changes: held apart from the epochs so that
    /// hashing takes no lock.
    ids: Arc<RepoKeys>,
    held: Arc<RwLock<Held>>,
    encrypted: bool,
}

/// The epochs a codec holds and the one it seals under.
#[derive(Debug)]
struct Held {
    keys: RepoKeys,
    write_epoch: u32,
}

impl Codec {
    /// A codec for a repository (`encrypted = false` only for `--no-encryption` repositories)
    /// sealing new objects under `write_epoch` (the keyring's newest epoch).
    pub fn new(repo_id: &str, keys: RepoKeys, encrypted: bool, write_epoch: u32) -> Self {
        let write_epoch = if keys.key(KeyUse::Meta, write_epoch).is_some() {
            write_epoch
        } else {
            keys.newest_epoch()
        };
        Codec {
            repo_id: repo_id.as_bytes().to_vec(),
            ids: Arc::new(keys.ids_only()),
            held: Arc::new(RwLock::new(Held { keys, write_epoch })),
            encrypted,
        }
    }

    fn held(&self) -> std::sync::RwLockReadGuard<'_, Held> {
        // A panic while adopting keys leaves the previous ones whole: the lock's poison
        // carries no broken state.
        self.held.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The key epoch new objects are sealed under.
    pub fn write_epoch(&self) -> u32 {
        self.held().write_epoch
    }

    /// The newest key epoch held.
    pub fn newest_epoch(&self) -> u32 {
        self.held().keys.newest_epoch()
    }

    /// The key epochs held, oldest first.
    pub fn epochs(&self) -> Vec<u32> {
        self.held().keys.epochs()
    }

    /// Adds the epochs of `keys` (read from a newer config of the same repository) to
    /// what this codec and all its clones hold, and seals from now on under `write_epoch`
    /// when it is newer than the current one. Epochs already held stay: what this process
    /// read before keeps opening. Refuses the keys of another repository.
    pub fn adopt(&self, keys: &RepoKeys, write_epoch: u32) -> Result<(), CodecError> {
        if !constant_time_eq(&keys.id_key, &self.ids.id_key) {
            return Err(CodecError::Authentication);
        }
        let mut held = self.held.write().unwrap_or_else(|e| e.into_inner());
        held.keys.absorb(keys);
        if write_epoch > held.write_epoch && held.keys.key(KeyUse::Meta, write_epoch).is_some() {
            held.write_epoch = write_epoch;
        }
        Ok(())
    }

    /// The key epoch an envelope names (its header), without opening it.
    pub fn epoch_of(sealed: &[u8]) -> Option<u32> {
        (sealed.len() >= 12 && &sealed[0..4] == MAGIC)
            .then(|| u32::from_le_bytes(sealed[8..12].try_into().expect("4 bytes")))
    }

    /// Keyed content id of plaintext.
    pub fn content_id(&self, plaintext: &[u8]) -> ContentId {
        self.ids.content_id(plaintext)
    }

    /// [`Self::content_id`], with a fingerprint of each `part_len` bytes pushed to `fps`
    /// (see [`crate::crypto::RepoKeys::content_id_parted`]).
    pub fn content_id_parted(
        &self,
        plaintext: &[u8],
        part_len: usize,
        fps: &mut Vec<u64>,
    ) -> ContentId {
        self.ids.content_id_parted(plaintext, part_len, fps)
    }

    fn key_for(&self, kind: ObjectKind, epoch: u32) -> Result<[u8; 32], CodecError> {
        self.held()
            .keys
            .key(usage_of(kind), epoch)
            .ok_or(CodecError::UnknownKeyEpoch(epoch))
    }

    /// The epoch new objects of `kind` are sealed under and its key, read together (the
    /// write epoch is always held: `new` and `adopt` check it).
    fn write_key(&self, kind: ObjectKind) -> (u32, [u8; 32]) {
        let held = self.held();
        let epoch = held.write_epoch;
        let key = held
            .keys
            .key(usage_of(kind), epoch)
            .unwrap_or_else(|| unreachable!("Codec::new and adopt check the write epoch is held"));
        (epoch, key)
    }

    fn aad(&self, header: &[u8], id: &ContentId, context: &[u8]) -> Vec<u8> {
        let mut aad =
            Vec::with_capacity(header.len() + self.repo_id.len() + 32 + context.len() + 2);
        aad.extend_from_slice(header);
        aad.extend_from_slice(&self.repo_id);
        aad.push(0);
        aad.extend_from_slice(&id.0);
        aad.extend_from_slice(context);
        aad
    }

    /// Compresses (zstd at `level`, 0 = never) and seals `plaintext`.
    ///
    /// Memory: the output buffer is the only copy made. Compression writes into it, the
    /// header is slid in front, and encryption happens in place, so sealing a 16 MiB WAL
    /// segment costs at most one more segment-sized buffer.
    pub fn seal(
        &self,
        kind: ObjectKind,
        id: &ContentId,
        context: &[u8],
        plaintext: &[u8],
        level: i32,
    ) -> Vec<u8> {
        let compressed = if level != 0 {
            compression::compress_whole(kind, plaintext, level, HEADER_LEN + CHECKSUM_LEN)
        } else {
            None
        };
        match compressed {
            Some(mut body) => {
                body.splice(0..0, [0u8; HEADER_LEN]);
                self.seal_prepared(kind, id, context, body, true)
            }
            None => {
                let mut raw = Vec::with_capacity(HEADER_LEN + plaintext.len() + CHECKSUM_LEN);
                raw.extend_from_slice(&[0u8; HEADER_LEN]);
                raw.extend_from_slice(plaintext);
                self.seal_prepared(kind, id, context, raw, false)
            }
        }
    }

    /// Seals a buffer whose first [`HEADER_LEN`] bytes are reserved for the header and whose
    /// rest is the body (zstd frame when `compressed`), in place.
    fn seal_prepared(
        &self,
        kind: ObjectKind,
        id: &ContentId,
        context: &[u8],
        mut out: Vec<u8>,
        compressed: bool,
    ) -> Vec<u8> {
        let key = self.write_header(&mut out[..HEADER_LEN], kind, VERSION, compressed);
        let aad = self.aad(&out[..HEADER_LEN], id, context);
        if self.encrypted {
            let nonce = *XNonce::from_slice(&out[12..36]);
            let tag = XChaCha20Poly1305::new((&key).into())
                .encrypt_in_place_detached(&nonce, &aad, &mut out[HEADER_LEN..])
                .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
            out.extend_from_slice(&tag);
        } else {
            let sum = checksum(&key, &aad, &out[HEADER_LEN..]);
            out.extend_from_slice(&sum);
        }
        out
    }

    /// Fills in an envelope header (fresh random nonce when encrypting), naming the write
    /// epoch; returns that epoch's key for `kind`, the one to seal the body with.
    fn write_header(
        &self,
        header: &mut [u8],
        kind: ObjectKind,
        version: u8,
        compressed: bool,
    ) -> [u8; 32] {
        let (key_version, key) = self.write_key(kind);
        header[0..4].copy_from_slice(MAGIC);
        header[4] = version;
        header[5] = kind as u8;
        header[6] = u8::from(compressed);
        header[7] = u8::from(self.encrypted);
        header[8..12].copy_from_slice(&key_version.to_le_bytes());
        if self.encrypted {
            rand::rngs::OsRng.fill_bytes(&mut header[12..36]);
        } else {
            header[12..36].fill(0);
        }
        key
    }

    /// Authenticates, decrypts and decompresses an envelope (either version).
    pub fn open(
        &self,
        kind: ObjectKind,
        id: &ContentId,
        context: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, CodecError> {
        let (key, aad) = self.check_header(kind, id, context, sealed)?;
        let (header, body) = sealed.split_at(HEADER_LEN);
        if header[4] == chunked::VERSION {
            return Ok(self.open_chunked_to_vec(&key, header, &aad, body)?.0);
        }
        self.open_single(&key, header, &aad, body)
    }

    /// Opens an envelope into memory and also returns the plaintext's keyed content id
    /// (computed part by part while opening a chunked envelope).
    pub fn open_with_id(
        &self,
        kind: ObjectKind,
        id: &ContentId,
        context: &[u8],
        sealed: &[u8],
    ) -> Result<(Vec<u8>, ContentId), CodecError> {
        let (key, aad) = self.check_header(kind, id, context, sealed)?;
        let (header, body) = sealed.split_at(HEADER_LEN);
        if header[4] == chunked::VERSION {
            return self.open_chunked_to_vec(&key, header, &aad, body);
        }
        let plain = self.open_single(&key, header, &aad, body)?;
        let id = self.content_id(&plain);
        Ok((plain, id))
    }

    /// Opens an envelope piece by piece: `sink(offset, bytes)` receives the plaintext (in any
    /// order, from several threads). Returns the plaintext's length and keyed content id.
    /// A chunked envelope never holds more than about one part per thread in memory; the
    /// caller must discard what the sink received when this fails.
    pub fn open_to(
        &self,
        kind: ObjectKind,
        id: &ContentId,
        context: &[u8],
        sealed: &[u8],
        sink: &(dyn Fn(u64, &[u8]) -> std::io::Result<()> + Sync),
    ) -> Result<(u64, ContentId), OpenToError> {
        let (key, aad) = self.check_header(kind, id, context, sealed)?;
        let (header, body) = sealed.split_at(HEADER_LEN);
        if header[4] == chunked::VERSION {
            return self.open_chunked_to(&key, header, &aad, body, sink);
        }
        let plain = self.open_single(&key, header, &aad, body)?;
        sink(0, &plain).map_err(OpenToError::Sink)?;
        Ok((plain.len() as u64, self.content_id(&plain)))
    }

    /// Checks magic, version, kind and protection; returns the key and associated data.
    fn check_header(
        &self,
        kind: ObjectKind,
        id: &ContentId,
        context: &[u8],
        sealed: &[u8],
    ) -> Result<([u8; 32], Vec<u8>), CodecError> {
        if sealed.len() < HEADER_LEN {
            return Err(CodecError::Malformed(format!("{} bytes", sealed.len())));
        }
        let header = &sealed[..HEADER_LEN];
        if &header[0..4] != MAGIC || !(header[4] == VERSION || header[4] == chunked::VERSION) {
            return Err(CodecError::Malformed("bad magic or version".into()));
        }
        match ObjectKind::from_u8(header[5]) {
            Some(k) if k == kind => {}
            _ => {
                return Err(CodecError::WrongKind {
                    expected: kind,
                    found: header[5],
                })
            }
        }
        let protection = header[7];
        if protection != u8::from(self.encrypted) {
            return Err(CodecError::Protection {
                expected: u8::from(self.encrypted),
                found: protection,
            });
        }
        let key_version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        Ok((
            self.key_for(kind, key_version)?,
            self.aad(header, id, context),
        ))
    }

    /// Opens the body of a version 1 envelope.
    fn open_single(
        &self,
        key: &[u8; 32],
        header: &[u8],
        aad: &[u8],
        body: &[u8],
    ) -> Result<Vec<u8>, CodecError> {
        let plain_body = self.authenticate_single(key, header, aad, body)?;
        match header[6] {
            0 => Ok(plain_body),
            1 => compression::decompress_whole(&plain_body).map_err(CodecError::Decompress),
            other => Err(CodecError::Malformed(format!(
                "unknown compression {other}"
            ))),
        }
    }

    /// Opens an envelope straight into `out` (its plaintext must fit) and returns the
    /// plaintext's length: a restore decompresses blocks into the aligned buffer of a direct
    /// write instead of into a vector it would then copy.
    pub fn open_into(
        &self,
        kind: ObjectKind,
        id: &ContentId,
        context: &[u8],
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<usize, CodecError> {
        let (key, aad) = self.check_header(kind, id, context, sealed)?;
        let (header, body) = sealed.split_at(HEADER_LEN);
        let too_long = || CodecError::Malformed("plaintext longer than its place".into());
        if header[4] == chunked::VERSION {
            let plain = self.open_chunked_to_vec(&key, header, &aad, body)?.0;
            out.get_mut(..plain.len())
                .ok_or_else(too_long)?
                .copy_from_slice(&plain);
            return Ok(plain.len());
        }
        let plain_body = self.authenticate_single(&key, header, &aad, body)?;
        match header[6] {
            0 => {
                out.get_mut(..plain_body.len())
                    .ok_or_else(too_long)?
                    .copy_from_slice(&plain_body);
                Ok(plain_body.len())
            }
            1 => compression::decompress_into(&plain_body, out).map_err(CodecError::Decompress),
            other => Err(CodecError::Malformed(format!(
                "unknown compression {other}"
            ))),
        }
    }

    /// Authenticates (and decrypts) the body of a version 1 envelope: its payload, still
    /// compressed if the header says so.
    fn authenticate_single(
        &self,
        key: &[u8; 32],
        header: &[u8],
        aad: &[u8],
        body: &[u8],
    ) -> Result<Vec<u8>, CodecError> {
        let plain_body: Vec<u8> = if self.encrypted {
            if body.len() < TAG_LEN {
                return Err(CodecError::Malformed("shorter than its tag".into()));
            }
            let (ct, tag) = body.split_at(body.len() - TAG_LEN);
            let mut buf = ct.to_vec();
            XChaCha20Poly1305::new(key.into())
                .decrypt_in_place_detached(
                    XNonce::from_slice(&header[12..36]),
                    aad,
                    &mut buf,
                    tag.into(),
                )
                .map_err(|_| CodecError::Authentication)?;
            buf
        } else {
            if body.len() < CHECKSUM_LEN {
                return Err(CodecError::Malformed("shorter than its checksum".into()));
            }
            let (data, sum) = body.split_at(body.len() - CHECKSUM_LEN);
            let expected = checksum(key, aad, data);
            if !constant_time_eq(&expected, sum) {
                return Err(CodecError::Authentication);
            }
            data.to_vec()
        };
        Ok(plain_body)
    }
}

/// Which subkey family seals objects of `kind`.
fn usage_of(kind: ObjectKind) -> KeyUse {
    match kind {
        ObjectKind::Wal => KeyUse::Wal,
        ObjectKind::Block => KeyUse::Data,
        _ => KeyUse::Meta,
    }
}

fn checksum(key: &[u8; 32], aad: &[u8], data: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(&(aad.len() as u64).to_le_bytes());
    h.update(aad);
    h.update(data);
    *h.finalize().as_bytes()
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::MasterSecret;

    /// A codec over a fixed master secret, for the codec's tests.
    pub(crate) fn codec(encrypted: bool) -> Codec {
        Codec::new(
            "repo-a",
            MasterSecret::from_bytes([9; 32]).derive(),
            encrypted,
            1,
        )
    }

    #[test]
    fn round_trip_compressible_and_random_both_protections() {
        for encrypted in [true, false] {
            let c = codec(encrypted);
            let text = b"hello wal ".repeat(10_000);
            let mut random = vec![0u8; 100_000];
            rand::rngs::OsRng.fill_bytes(&mut random);
            for data in [text.as_slice(), random.as_slice(), b"".as_slice()] {
                let id = c.content_id(data);
                let sealed = c.seal(ObjectKind::Wal, &id, b"name", data, 3);
                assert_eq!(
                    c.open(ObjectKind::Wal, &id, b"name", &sealed).unwrap(),
                    data
                );
            }
            let id = c.content_id(&text);
            let sealed = c.seal(ObjectKind::Wal, &id, b"name", &text, 3);
            assert!(
                sealed.len() < text.len() / 10,
                "compressible data compresses"
            );
            let sealed_random = c.seal(ObjectKind::Block, &id, b"", &random, 3);
            assert!(
                sealed_random.len() <= random.len() + HEADER_LEN + 32,
                "incompressible data is stored raw"
            );
        }
    }

    #[test]
    fn every_binding_is_authenticated() {
        let c = codec(true);
        let data = b"segment bytes".repeat(100);
        let id = c.content_id(&data);
        let sealed = c.seal(ObjectKind::Wal, &id, b"000000010000000000000001", &data, 1);
        let other_id = c.content_id(b"x");
        assert_eq!(
            c.open(
                ObjectKind::Wal,
                &other_id,
                b"000000010000000000000001",
                &sealed
            ),
            Err(CodecError::Authentication)
        );
        assert_eq!(
            c.open(ObjectKind::Wal, &id, b"000000010000000000000002", &sealed),
            Err(CodecError::Authentication)
        );
        assert!(matches!(
            c.open(ObjectKind::Block, &id, b"000000010000000000000001", &sealed),
            Err(CodecError::WrongKind { .. })
        ));
        let other_repo = Codec::new(
            "repo-b",
            MasterSecret::from_bytes([9; 32]).derive(),
            true,
            1,
        );
        assert_eq!(
            other_repo.open(ObjectKind::Wal, &id, b"000000010000000000000001", &sealed),
            Err(CodecError::Authentication)
        );
        for pos in [5usize, 7, 20, HEADER_LEN + 3, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[pos] ^= 0x40;
            assert!(
                c.open(ObjectKind::Wal, &id, b"000000010000000000000001", &bad)
                    .is_err(),
                "flip at {pos} detected"
            );
        }
        assert!(matches!(
            c.open(ObjectKind::Wal, &id, b"", &sealed[..10]),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn unencrypted_objects_still_detect_damage() {
        let c = codec(false);
        let data = b"abc".repeat(1000);
        let id = c.content_id(&data);
        let mut sealed = c.seal(ObjectKind::Wal, &id, b"n", &data, 3);
        let mid = sealed.len() / 2;
        sealed[mid] ^= 1;
        assert_eq!(
            c.open(ObjectKind::Wal, &id, b"n", &sealed),
            Err(CodecError::Authentication)
        );
    }

    #[test]
    fn large_inputs_compress_with_workers_and_round_trip() {
        let c = codec(true);
        let mut data = vec![0u8; 8 << 20];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i / 4096 % 251) as u8;
        }
        let id = c.content_id(&data);
        let sealed = c.seal(ObjectKind::Wal, &id, b"n", &data, 1);
        assert!(sealed.len() < data.len() / 4);
        assert_eq!(c.open(ObjectKind::Wal, &id, b"n", &sealed).unwrap(), data);
    }
}
