//! pgbunker storage backends: a repository URL plus options becomes the engine's
//! [`Storage`] trait, implemented over the `object_store` crate.
//!
//! | URL                        | backend                                                    |
//! |----------------------------|------------------------------------------------------------|
//! | `file:///var/lib/pgbunker` | local disk; every successful write fsyncs file and dirs   |
//! | `s3://bucket/prefix`       | S3 and compatibles (endpoint, region, path style, CA, ...) |
//! | `gs://bucket/prefix`       | Google Cloud Storage (credentials from the environment)   |
//! | `az://container/prefix`    | Azure Blob Storage (credentials from the environment)     |
//! | `memory://`                | in process, for tests and demos                            |
//!
//! What every backend guarantees to the engine:
//! - **create-only puts** never overwrite. If a create finds the name taken and the existing
//!   bytes are identical to ours, it is reported as `Created`: that is what a retried request
//!   whose first attempt landed looks like, and identical content is the same object anyway.
//! - **compare-and-swap** through `If-Match` on object stores, and through a lock file plus
//!   content hash on local disk (where `object_store` has no conditional update).
//! - **retries with a deadline and jitter** for remote backends (object_store's retry layer:
//!   exponential backoff with jitter, `max_retries` and `retry_timeout` from the options);
//!   errors reaching the engine are final and classified (not found, precondition,
//!   transient, permanent).
//! - **multipart** uploads for objects above `multipart_threshold`.

mod backend;
mod errors;
mod local;
mod options;

use std::sync::Arc;

pub use backend::ObjectStoreBackend;
pub use options::{parse_duration, StorageOptions, DEFAULT_MULTIPART_THRESHOLD};
use pgbunker_engine::storage::Storage;

/// Why a repository URL could not be turned into storage.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL is malformed or its scheme unknown.
    #[error("invalid repository URL {url:?}: {why}")]
    BadUrl { url: String, why: String },
    /// An option has a bad value.
    #[error("invalid repository option {key}: {why}")]
    BadOption { key: String, why: String },
    /// The backend refused its configuration.
    #[error("cannot configure {url}: {why}")]
    Backend { url: String, why: String },
}

/// Opens storage for a repository URL.
pub fn open(url: &str, options: &StorageOptions) -> Result<Arc<dyn Storage>, OpenError> {
    let parsed = url::Url::parse(url).map_err(|e| OpenError::BadUrl {
        url: url.to_string(),
        why: format!("{e}; expected file:///path, s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or memory://"),
    })?;
    match parsed.scheme() {
        "memory" => Ok(Arc::new(ObjectStoreBackend::memory(&parsed, options)?)),
        "file" => Ok(Arc::new(ObjectStoreBackend::local(&parsed, options)?)),
        "s3" | "gs" | "az" => Ok(Arc::new(ObjectStoreBackend::remote(&parsed, options)?)),
        other => Err(OpenError::BadUrl {
            url: url.to_string(),
            why: format!("unknown scheme {other:?}; use file://, s3://, gs://, az:// or memory://"),
        }),
    }
}
