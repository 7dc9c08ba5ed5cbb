//! Engine errors.
//!
//! Policy: every error names the object, file or setting at fault and says what to do.
//! Errors are typed by *meaning*, because callers act on the meaning:
//! - `archive-get` must tell "definitely absent" ([`Error::NotFound`], exit 1) apart from
//!   "presence unknown" (storage faults, authentication failures, corruption: PostgreSQL must
//!   abort recovery, exit > 125);
//! - configuration and key problems ([`Error::Config`], [`Error::Key`]) are the operator's to
//!   fix (exit 2);
//! - everything else is an operation failure (exit 1).
//!
//! The binary maps these to exit codes; the engine never exits.

use crate::storage::StorageError;

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, by meaning.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage layer failed (network, permissions, timeouts after retries...).
    #[error("storage: {0}")]
    Storage(#[from] StorageError),

    /// The requested thing definitely does not exist in the repository.
    #[error("{0}")]
    NotFound(String),

    /// An object failed authentication or its checksum: it was altered or damaged.
    #[error("corrupt object {object}: {detail}")]
    Corrupt { object: String, detail: String },

    /// The key or passphrase does not unlock the repository, or key material is malformed.
    #[error("{0}")]
    Key(String),

    /// A configuration value or argument is invalid.
    #[error("{0}")]
    Config(String),

    /// Input from PostgreSQL (a WAL file, a data directory) is not what it must be.
    #[error("{0}")]
    InvalidInput(String),

    /// A conflict that must never be resolved by overwriting (for example a WAL segment
    /// pushed again with different content).
    #[error("{0}")]
    Conflict(String),

    /// Local filesystem I/O failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A queue or wait ran out of time.
    #[error("{0}")]
    Timeout(String),
}

impl Error {
    /// Wraps an I/O error with what we were doing and to which path.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True when the operation could not run for a reason outside the repository's data:
    /// local resources (a full or unwritable disk or temporary directory), storage that
    /// cannot be reached or refuses access, a wait that ran out. Such an error says nothing
    /// about whether a backup is intact: a drill reports it as `error` (the drill could not
    /// run), never as an integrity failure. Missing objects ([`Error::NotFound`], a storage
    /// not-found) and authentication failures ([`Error::Corrupt`]) are not operational.
    pub fn is_operational(&self) -> bool {
        match self {
            Error::Io { .. } | Error::Timeout(_) => true,
            Error::Storage(e) => !e.is_not_found(),
            _ => false,
        }
    }

    /// Builds a [`Error::Corrupt`].
    pub fn corrupt(object: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            object: object.into(),
            detail: detail.into(),
        }
    }
}
