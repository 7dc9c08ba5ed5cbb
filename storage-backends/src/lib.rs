//! pgcairn storage backends: a repository URL plus options becomes the engine's
//! [`Storage`] trait, implemented over the `object_store` crate.
//!
//! | URL                        | backend                                                    |
//! |----------------------------|------------------------------------------------------------|
//! | `file:///var/lib/pgcairn` | local disk; every successful write fsyncs file and dirs   |
//! | `s3://bucket/prefix`       | S3 and compatibles (endpoint, region, path style, CA, ...) |
//! | `gs://bucket/prefix`       | Google Cloud Storage (credentials from the environment)   |
//! | `az://container/prefix`    | Azure Blob Storage (credentials from the environment)     |
//! | `memory://`                | in process, for tests and demos                            |
//!
//! Options (the `[repo]` table, see [`StorageOptions`]), by scheme:
//! - every remote scheme: `endpoint`, `allow_http`, `ca_file`, `max_retries`, `retry_timeout`,
//!   `request_timeout`, `connect_timeout`, `multipart_threshold`, `skip_signature` (send no
//!   credentials: public buckets and emulators);
//! - `s3://`: `region`, `virtual_hosted_style`, `access_key_id`, `secret_access_key`,
//!   `session_token` (else the `AWS_*` environment variables);
//! - `az://`: `account_name`, `access_key` (else the `AZURE_STORAGE_*` environment variables),
//!   `endpoint` (the blob service URL, default `https://ACCOUNT.blob.core.windows.net`), and
//!   `use_emulator = true` for Azurite: account `devstoreaccount1` and its well-known key unless
//!   given, `endpoint` is the emulator's root (default `http://127.0.0.1:10000`, the account is
//!   appended as the first path segment) and `allow_http` defaults to true;
//! - `gs://`: `service_account_path` (a service account JSON file; else the `GOOGLE_*`
//!   environment variables or application default credentials), `endpoint` (the XML API base
//!   URL, default `https://storage.googleapis.com`).
//!
//! An option given for a scheme it does not apply to is an error.
//!
//! Tested against real servers on loopback (`tests/conformance.rs`): S3 with moto, Azure with
//! Azurite. `gs://` is not: object_store's GCS client speaks the XML API with
//! `x-goog-if-generation-match` preconditions, which no emulator on PyPI or npm implements.
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
mod direct_create;
mod errors;
mod local;
mod options;

use std::sync::Arc;

pub use backend::ObjectStoreBackend;
pub use options::{
    parse_duration, StorageOptions, DEFAULT_MULTIPART_THRESHOLD, PATH_ENV_VARS, PATH_OPTIONS,
};
use pgcairn_engine::storage::Storage;

/// Why a repository URL could not be turned into storage.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL is malformed or its scheme unknown.
    #[error("invalid repository URL {url:?}: {why}")]
    BadUrl { url: String, why: String },
    /// An option has a bad value.
    #[error("invalid repository option {key}: {why}")]
    BadOption { key: String, why: String },
    /// Nothing is at that URL (file://: no such directory); nothing was created.
    #[error("no pgcairn repository at {url}: {why}")]
    NoRepository { url: String, why: String },
    /// The backend refused its configuration.
    #[error("cannot configure {url}: {why}")]
    Backend { url: String, why: String },
}

/// `url` with any user name and password replaced by `****`, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("****");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(_) => url.to_string(),
        // Not a URL: the part before an '@' may still be a secret.
        Err(_) => match url.rfind('@') {
            Some(at) => format!("****{}", &url[at..]),
            None => url.to_string(),
        },
    }
}

/// Opens storage for an existing repository URL; never creates anything.
pub fn open(url: &str, options: &StorageOptions) -> Result<Arc<dyn Storage>, OpenError> {
    open_with(url, options, false)
}

/// Opens storage for `init`: a `file://` directory is created (0700) when missing.
pub fn create(url: &str, options: &StorageOptions) -> Result<Arc<dyn Storage>, OpenError> {
    open_with(url, options, true)
}

fn open_with(
    url: &str,
    options: &StorageOptions,
    create: bool,
) -> Result<Arc<dyn Storage>, OpenError> {
    let parsed = url::Url::parse(url).map_err(|e| OpenError::BadUrl {
        url: redact_url(url),
        why: format!("{e}; expected file:///path, s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or memory://"),
    })?;
    // Credentials in the URL would be printed in errors, copied into restore_command and
    // shown by `ps`; object_store would also ignore them silently and fall back to the
    // instance metadata service. Refuse them, and say where they go.
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(OpenError::BadUrl {
            url: redact_url(url),
            why: "credentials do not belong in the repository URL (it is printed in messages and \
                  copied into restore_command): put them in the config file's [repo] section \
                  (access_key_id / secret_access_key, account_name / access_key) or in the \
                  provider's environment variables (AWS_ACCESS_KEY_ID, ...)"
                .into(),
        });
    }
    match parsed.scheme() {
        "memory" => Ok(Arc::new(ObjectStoreBackend::memory(&parsed, options)?)),
        "file" => Ok(Arc::new(ObjectStoreBackend::local(
            &parsed, options, create,
        )?)),
        "s3" | "gs" | "az" => Ok(Arc::new(ObjectStoreBackend::remote(&parsed, options)?)),
        other => Err(OpenError::BadUrl {
            url: url.to_string(),
            why: format!("unknown scheme {other:?}; use file://, s3://, gs://, az:// or memory://"),
        }),
    }
}
