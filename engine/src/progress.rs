//! Progress reporting from the library. The engine only calls this trait; the binary owns
//! the terminal (indicatif bars on a TTY, periodic log lines otherwise, nothing on request).

/// Receives progress of long operations. Every method has a no-op default.
pub trait Progress: Send + Sync {
    /// A phase starts; `total` is the number of bytes it will process, if known.
    fn phase(&self, _name: &str, _total: Option<u64>) {}
    /// `read` more bytes were processed, of which `stored` were new stored bytes.
    fn advance(&self, _read: u64, _stored: u64) {}
    /// The operation ended.
    fn finish(&self) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
