//! Backend options (the `[repo]` table of the config file, minus url and keys).
//!
//! Option names follow object_store's where one exists. Defaults are documented on each
//! accessor; unknown options are an error, so a typo never silently does nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::OpenError;

/// Objects larger than this are uploaded in parts (remote backends).
pub const DEFAULT_MULTIPART_THRESHOLD: usize = 64 << 20;

const KNOWN: &[&str] = &[
    "endpoint",
    "region",
    "allow_http",
    "virtual_hosted_style",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "account_name",
    "access_key",
    "use_emulator",
    "service_account_path",
    "skip_signature",
    "ca_file",
    "max_retries",
    "retry_timeout",
    "request_timeout",
    "connect_timeout",
    "multipart_threshold",
    "checksum_algorithm",
];

/// Options whose value is a path on this host (read when the storage is opened).
pub const PATH_OPTIONS: &[&str] = &["ca_file", "service_account_path"];

/// Environment variables the object-store clients read as paths on this host: credentials
/// files and the token files of workload identities, which are read again at every token
/// refresh, long after the storage was opened.
pub const PATH_ENV_VARS: &[&str] = &[
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AZURE_FEDERATED_TOKEN_FILE",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_SERVICE_ACCOUNT",
    "GOOGLE_SERVICE_ACCOUNT_PATH",
    "SERVICE_ACCOUNT",
];

/// Options that only mean something for some URL schemes, and those schemes. Every other
/// option applies to every remote scheme (`endpoint`, `allow_http`, `ca_file`, retries and
/// timeouts, `multipart_threshold`, `skip_signature`).
const SCHEME_ONLY: &[(&str, &[&str])] = &[
    ("region", &["s3"]),
    ("virtual_hosted_style", &["s3"]),
    ("access_key_id", &["s3"]),
    ("secret_access_key", &["s3"]),
    ("session_token", &["s3"]),
    ("checksum_algorithm", &["s3"]),
    ("account_name", &["az"]),
    ("access_key", &["az"]),
    ("use_emulator", &["az"]),
    ("service_account_path", &["gs"]),
];

/// String options with typed accessors.
#[derive(Debug, Clone, Default)]
pub struct StorageOptions {
    values: BTreeMap<String, String>,
}

impl StorageOptions {
    /// Builds options, refusing unknown keys.
    pub fn new(values: BTreeMap<String, String>) -> Result<Self, OpenError> {
        for k in values.keys() {
            if !KNOWN.contains(&k.as_str()) {
                return Err(OpenError::BadOption {
                    key: k.clone(),
                    why: format!(
                        "unknown option; known repository options: {}",
                        KNOWN.join(", ")
                    ),
                });
            }
        }
        Ok(StorageOptions { values })
    }

    /// Refuses an option set for a scheme it does not apply to (say `access_key_id` with an
    /// `az://` URL), so that it never silently does nothing.
    pub fn check_scheme(&self, scheme: &str) -> Result<(), OpenError> {
        for (key, schemes) in SCHEME_ONLY {
            if self.values.contains_key(*key) && !schemes.contains(&scheme) {
                let urls: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
                return Err(OpenError::BadOption {
                    key: (*key).into(),
                    why: format!(
                        "applies to {} repositories only, not {scheme}://",
                        urls.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    /// Sets one option (builder style, for tests).
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.values.insert(key.to_string(), value.to_string());
        self
    }

    /// Raw value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Boolean option.
    pub fn flag(&self, key: &str) -> Result<Option<bool>, OpenError> {
        self.get(key)
            .map(|v| match v {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                other => Err(OpenError::BadOption {
                    key: key.into(),
                    why: format!("{other:?} is not a boolean"),
                }),
            })
            .transpose()
    }

    /// Duration option: a number with unit `ms`, `s`, `m` (or bare seconds).
    pub fn duration(&self, key: &str) -> Result<Option<Duration>, OpenError> {
        self.get(key)
            .map(|v| {
                parse_duration(v).ok_or_else(|| OpenError::BadOption {
                    key: key.into(),
                    why: format!("{v:?} is not a duration like 500ms, 30s or 2m"),
                })
            })
            .transpose()
    }

    /// Unsigned option.
    pub fn number(&self, key: &str) -> Result<Option<u64>, OpenError> {
        self.get(key)
            .map(|v| {
                v.parse().map_err(|_| OpenError::BadOption {
                    key: key.into(),
                    why: format!("{v:?} is not a number"),
                })
            })
            .transpose()
    }

    /// Retries after a failed request (default 5).
    pub fn max_retries(&self) -> Result<usize, OpenError> {
        Ok(self.number("max_retries")?.unwrap_or(5) as usize)
    }

    /// Deadline for all retries of one request (default 60 s).
    pub fn retry_timeout(&self) -> Result<Duration, OpenError> {
        Ok(self
            .duration("retry_timeout")?
            .unwrap_or(Duration::from_secs(60)))
    }

    /// Multipart threshold in bytes (default 64 MiB).
    pub fn multipart_threshold(&self) -> Result<usize, OpenError> {
        Ok(self
            .number("multipart_threshold")?
            .map(|n| n as usize)
            .unwrap_or(DEFAULT_MULTIPART_THRESHOLD))
    }
}

/// Parses `500ms`, `30s`, `2m`, `1h` or bare seconds.
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let (num, unit) = v
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| v.split_at(i))
        .unwrap_or((v, "s"));
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_options_are_known_options() {
        for key in PATH_OPTIONS {
            assert!(KNOWN.contains(key), "{key}");
        }
    }

    #[test]
    fn unknown_options_are_refused_and_values_checked() {
        let mut m = BTreeMap::new();
        m.insert("endpont".to_string(), "x".to_string());
        assert!(StorageOptions::new(m)
            .unwrap_err()
            .to_string()
            .contains("endpont"));
        let o = StorageOptions::default()
            .with("retry_timeout", "1500ms")
            .with("allow_http", "maybe");
        assert_eq!(o.retry_timeout().unwrap(), Duration::from_millis(1500));
        assert!(o.flag("allow_http").is_err());
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("x"), None);
    }

    #[test]
    fn scheme_specific_options_are_refused_elsewhere() {
        let o = StorageOptions::default().with("access_key_id", "k");
        assert!(o.check_scheme("s3").is_ok());
        let e = o.check_scheme("az").unwrap_err().to_string();
        assert!(e.contains("access_key_id") && e.contains("s3://"), "{e}");
        let o = StorageOptions::default()
            .with("use_emulator", "true")
            .with("endpoint", "http://127.0.0.1:1");
        assert!(o.check_scheme("az").is_ok());
        assert!(o.check_scheme("gs").is_err());
        let o = StorageOptions::default().with("service_account_path", "/k.json");
        assert!(o.check_scheme("gs").is_ok());
        assert!(o.check_scheme("s3").is_err());
    }
}
