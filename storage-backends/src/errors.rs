//! Classification of object_store errors into the engine's [`StorageError`] meanings.

use pgcairn_engine::storage::StorageError;

/// Maps an object_store error for operation `op` on `key`.
pub fn classify(op: &'static str, key: &str, e: object_store::Error) -> StorageError {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => StorageError::NotFound {
            key: key.to_string(),
        },
        E::Precondition { .. } | E::AlreadyExists { .. } => StorageError::Precondition {
            key: key.to_string(),
        },
        E::NotSupported { .. } | E::NotImplemented { .. } => StorageError::Unsupported {
            backend: "this backend".into(),
            what: format!("{op}: {e}"),
        },
        E::PermissionDenied { .. } | E::Unauthenticated { .. } | E::InvalidPath { .. } => {
            StorageError::Permanent {
                op,
                key: key.to_string(),
                detail: e.to_string(),
            }
        }
        other => {
            let detail = other.to_string();
            // Client errors (4xx other than the above) do not pass by retrying. Matched with
            // their reason phrase ("status code: 403 Forbidden"): a bare "400" also matches
            // an elapsed time like "in 400.04ms" in a transient error's text.
            let permanent = [
                "403 Forbidden",
                "400 Bad Request",
                "NoSuchBucket",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "BadScheme",
            ]
            .iter()
            .any(|m| detail.contains(m));
            if permanent {
                StorageError::Permanent {
                    op,
                    key: key.to_string(),
                    detail,
                }
            } else {
                StorageError::Transient {
                    op,
                    key: key.to_string(),
                    detail,
                }
            }
        }
    }
}
