//! Read-only memory maps of WAL files.
//!
//! archive-push maps the segment instead of reading it into buffers: the pages come straight
//! from the page cache (PostgreSQL just wrote them), with no copy and few page faults, which
//! on a 16 MiB segment is a large share of a call's cost.
//!
//! Safety argument for the one `unsafe` here: a mapped file changing underneath us is
//! undefined behaviour in Rust's model. PostgreSQL never writes to a segment it has handed to
//! `archive_command` (the segment is complete), and recycles it only after the command
//! succeeded. A file that is nevertheless modified would at worst yield a content id that does
//! not match the data (caught: archive-get re-hashes), never memory unsafety in practice.

use std::path::Path;

use crate::error::{Error, Result};

/// A read-only map of a whole file (an empty file maps to an empty slice).
#[derive(Debug)]
pub struct MappedFile {
    map: Option<memmap2::Mmap>,
}

impl MappedFile {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> Result<Self> {
        let err = |e| Error::io(format!("reading WAL file {}", path.display()), e);
        let file = std::fs::File::open(path).map_err(err)?;
        if file.metadata().map_err(err)?.len() == 0 {
            return Ok(MappedFile { map: None });
        }
        // SAFETY: see the module docs: the file is a finished WAL file that PostgreSQL does
        // not modify while archive_command runs.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.map_err(err)?;
        Ok(MappedFile { map: Some(map) })
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}
