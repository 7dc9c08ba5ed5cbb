//! The backup's file list, spilled to a temporary file as files finish.
//!
//! A file entry holds 33 bytes per block, and a 1 TiB cluster has 16 million blocks: kept in
//! memory until the manifest is written, the file list alone was half the design's 1 GiB
//! budget. Each finished entry is appended as JSON to an unnamed temporary file (in `TMPDIR`,
//! gone with the process, crash or not: about 70 bytes per block of local disk); memory keeps
//! each file's path and place in it, and the manifest is streamed from it in path order.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;

use super::entries::{BackupStats, FileEntry};
use crate::error::{Error, Result};

/// Finished file entries, on local disk.
#[derive(Debug)]
pub struct FileSpool {
    out: BufWriter<File>,
    end: u64,
    places: Vec<Place>,
    /// Files whose page checksums failed, with the failing blocks (kept: reported at the end).
    pub bad_pages: Vec<(String, Vec<u32>)>,
}

#[derive(Debug)]
struct Place {
    path: String,
    offset: u64,
    len: u32,
    /// The file's size, known without reading its entry back.
    size: u64,
}

/// Every spool failure is local (the temporary directory is full, unwritable or gone): an
/// [`Error::Io`], never a finding about the repository's data.
fn spool_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    let e: Box<dyn std::error::Error + Send + Sync> = e.into();
    let source = match e.downcast::<std::io::Error>() {
        Ok(io) => *io,
        Err(other) => std::io::Error::other(other),
    };
    Error::io(
        "the backup's file list could not be spilled to the temporary directory \
         (TMPDIR, default /tmp); free space there or point TMPDIR elsewhere",
        source,
    )
}

impl FileSpool {
    /// An empty spool in a new unnamed temporary file in `TMPDIR`.
    pub fn new() -> Result<Self> {
        Self::new_in(&std::env::temp_dir())
    }

    /// An empty spool in a new unnamed temporary file in `dir`.
    fn new_in(dir: &std::path::Path) -> Result<Self> {
        Ok(FileSpool {
            out: BufWriter::with_capacity(
                256 << 10,
                tempfile::tempfile_in(dir).map_err(spool_error)?,
            ),
            end: 0,
            places: Vec::new(),
            bad_pages: Vec::new(),
        })
    }

    /// A spool writing to `file` (tests: `/dev/full`).
    #[cfg(test)]
    pub(crate) fn over(file: File) -> Self {
        FileSpool {
            out: BufWriter::with_capacity(256 << 10, file),
            end: 0,
            places: Vec::new(),
            bad_pages: Vec::new(),
        }
    }

    /// Appends an entry and counts it in `stats` (files, size, blocks).
    pub fn push(&mut self, entry: &FileEntry, stats: &mut BackupStats) -> Result<()> {
        let json = serde_json::to_vec(entry).map_err(spool_error)?;
        self.out.write_all(&json).map_err(spool_error)?;
        self.places.push(Place {
            path: entry.path.clone(),
            offset: self.end,
            len: u32::try_from(json.len()).map_err(spool_error)?,
            size: entry.size,
        });
        self.end += json.len() as u64;
        stats.files += 1;
        stats.size += entry.size;
        stats.blocks += entry.blocks.iter().filter(|b| !b.is_zero()).count() as u64;
        stats.blocks_patched += entry.patches.len() as u64;
        if !entry.bad_pages.is_empty() {
            self.bad_pages
                .push((entry.path.clone(), entry.bad_pages.clone()));
        }
        Ok(())
    }

    /// The entries by path, each to be taken once.
    pub fn into_lookup(mut self) -> Result<SpooledFiles> {
        self.out.flush().map_err(spool_error)?;
        let file = self.out.into_inner().map_err(spool_error)?;
        let places = self
            .places
            .into_iter()
            .map(|p| (p.path, (p.offset, p.len, p.size)))
            .collect();
        Ok(SpooledFiles { file, places })
    }

    /// The entries in path order, read back one at a time.
    pub fn into_sorted(mut self) -> Result<SortedEntries> {
        self.out.flush().map_err(spool_error)?;
        let file = self.out.into_inner().map_err(spool_error)?;
        self.places.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        Ok(SortedEntries {
            file,
            places: self.places.into_iter(),
        })
    }
}

/// Entries of a [`FileSpool`] looked up by path (the reference backup's, for an incremental:
/// memory holds each file's path and place, not its blocks).
#[derive(Debug)]
pub struct SpooledFiles {
    file: File,
    /// Path to (offset, length) of its entry and the file's size.
    places: std::collections::HashMap<String, (u64, u32, u64)>,
}

impl SpooledFiles {
    /// Takes the entry for `path`, if any (a second take finds nothing).
    pub fn take(&mut self, path: &str) -> Result<Option<FileEntry>> {
        let Some((offset, len, _)) = self.places.remove(path) else {
            return Ok(None);
        };
        read_entry(&self.file, offset, len).map(Some)
    }

    /// The entry for `path`, if any.
    pub fn get(&self, path: &str) -> Result<Option<FileEntry>> {
        self.places
            .get(path)
            .map(|(offset, len, _)| read_entry(&self.file, *offset, *len))
            .transpose()
    }

    /// The size of the file at `path`, if any, without reading its entry (a large file's
    /// entry holds thousands of block ids).
    pub fn size(&self, path: &str) -> Option<u64> {
        self.places.get(path).map(|(_, _, size)| *size)
    }

    /// The paths of the entries (in no particular order).
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.places.keys().map(String::as_str)
    }

    /// Every entry, read back one at a time (in no particular order).
    pub fn entries(&self) -> impl Iterator<Item = Result<FileEntry>> + '_ {
        self.places
            .values()
            .map(|(offset, len, _)| read_entry(&self.file, *offset, *len))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.places.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }
}

fn read_entry(file: &File, offset: u64, len: u32) -> Result<FileEntry> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset).map_err(spool_error)?;
    serde_json::from_slice(&buf).map_err(spool_error)
}

/// Entries of a [`FileSpool`] in path order.
#[derive(Debug)]
pub struct SortedEntries {
    file: File,
    places: std::vec::IntoIter<Place>,
}

impl Iterator for SortedEntries {
    type Item = Result<FileEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        let place = self.places.next()?;
        Some(read_entry(&self.file, place.offset, place.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::ContentId;
    use crate::store::manifest::BlockRef;

    fn entry(path: &str, blocks: u8, bad: &[u32]) -> FileEntry {
        FileEntry {
            path: path.into(),
            size: u64::from(blocks) * 65536,
            mtime_ns: 7,
            mode: 0o600,
            uid: 1,
            gid: 2,
            blocks: (0..blocks)
                .map(|i| {
                    if i == 0 {
                        BlockRef::ZERO
                    } else {
                        BlockRef(Some(ContentId([i; 32])))
                    }
                })
                .collect(),
            block_lists: Vec::new(),
            checksum: "c".into(),
            bad_pages: bad.to_vec(),
            patches: Vec::new(),
            part_fps: vec![u64::MAX, 1],
        }
    }

    #[test]
    fn entries_come_back_whole_in_path_order_with_their_counts() {
        let mut spool = FileSpool::new().unwrap();
        let mut stats = BackupStats::default();
        let written = [
            entry("base/5/16384", 3, &[]),
            entry("PG_VERSION", 1, &[]),
            entry("base/1/1259", 40, &[17, 18]),
        ];
        for e in &written {
            spool.push(e, &mut stats).unwrap();
        }
        assert_eq!((stats.files, stats.blocks), (3, 2 + 39));
        assert_eq!(stats.size, 44 * 65536);
        assert_eq!(
            spool.bad_pages,
            vec![("base/1/1259".to_string(), vec![17, 18])]
        );
        let back: Vec<FileEntry> = spool.into_sorted().unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(
            back,
            vec![written[1].clone(), written[2].clone(), written[0].clone()]
        );

        let mut spool = FileSpool::new().unwrap();
        for e in &written {
            spool.push(e, &mut stats).unwrap();
        }
        let mut by_path = spool.into_lookup().unwrap();
        assert_eq!(by_path.len(), 3);
        assert_eq!(by_path.size("base/1/1259"), Some(40 * 65536));
        assert_eq!(by_path.size("nope"), None);
        let mut all: Vec<FileEntry> = by_path.entries().map(|e| e.unwrap()).collect();
        all.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(all, back);
        assert_eq!(
            by_path.get("PG_VERSION").unwrap().as_ref(),
            Some(&written[1])
        );
        assert_eq!(
            by_path.take("base/1/1259").unwrap().as_ref(),
            Some(&written[2])
        );
        assert_eq!(by_path.take("base/1/1259").unwrap(), None, "taken once");
        assert_eq!(by_path.take("nope").unwrap(), None);
        assert_eq!(
            by_path.take("PG_VERSION").unwrap().as_ref(),
            Some(&written[1])
        );
        assert_eq!(by_path.paths().collect::<Vec<_>>(), vec!["base/5/16384"]);
    }

    #[test]
    fn an_unusable_temporary_directory_is_named_in_the_error() {
        let err =
            FileSpool::new_in(std::path::Path::new("/nonexistent/pgcairn-spool")).unwrap_err();
        assert!(
            err.is_operational(),
            "a local failure, not a finding about the data: {err:?}"
        );
        let err = err.to_string();
        assert!(err.contains("TMPDIR"), "{err}");
    }
}
