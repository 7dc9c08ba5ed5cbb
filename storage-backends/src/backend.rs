//! [`Storage`] over any `object_store` backend.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion, WriteMultipart,
};
use pgcairn_engine::storage::{
    CreateOutcome, ObjectInfo, ObjectKey, ObjectVersion, Storage, StorageError,
};

use crate::direct_create::{self, Direct};
use crate::errors::classify;
use crate::local;
use crate::options::StorageOptions;
use crate::OpenError;

/// Part size of multipart uploads.
const PART_SIZE: usize = 16 << 20;

/// The well-known account of Azurite and the legacy Azure Storage Emulator (public, documented
/// by Microsoft: it only ever unlocks a local emulator).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// The well-known key of that account.
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// Azurite's default blob endpoint.
const AZURITE_DEFAULT_ENDPOINT: &str = "http://127.0.0.1:10000";

/// The engine's storage over an `object_store` implementation.
#[derive(Debug)]
pub struct ObjectStoreBackend {
    store: Arc<dyn ObjectStore>,
    /// Key prefix inside the bucket (`""` or ending with `/`).
    prefix: String,
    /// Root directory for `file://`: enables fsync and local compare-and-swap.
    local_root: Option<PathBuf>,
    /// Who new files and directories of a local repository go to ([`local::owner_for`]).
    local_owner: Option<(u32, u32)>,
    describe: String,
    multipart_threshold: usize,
}

fn backend_err(url: &url::Url, e: impl std::fmt::Display) -> OpenError {
    OpenError::Backend {
        url: url.to_string(),
        why: e.to_string(),
    }
}

impl ObjectStoreBackend {
    /// `file:///path`. With `create` (init only) the directory is created 0700 when missing;
    /// otherwise a missing directory is an error and nothing is created: a mistyped URL given
    /// to `info` or `archive-get` must not leave a directory tree behind.
    pub fn local(
        url: &url::Url,
        options: &StorageOptions,
        create: bool,
    ) -> Result<Self, OpenError> {
        let root = url.to_file_path().map_err(|_| OpenError::BadUrl {
            url: url.to_string(),
            why: "file:// URLs need an absolute path, like file:///var/lib/pgcairn".into(),
        })?;
        if create {
            crate::local::create_root(&root)
                .map_err(|e| backend_err(url, format!("creating {}: {e}", root.display())))?;
        } else if !root.is_dir() {
            return Err(OpenError::NoRepository {
                url: url.to_string(),
                why: format!(
                    "directory {} does not exist: check repo.url, or create a repository with `pgcairn init`",
                    root.display()
                ),
            });
        }
        let store = object_store::local::LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| backend_err(url, e))?;
        let local_owner = crate::local::owner_for(&root);
        Ok(ObjectStoreBackend {
            store: Arc::new(store),
            prefix: String::new(),
            local_root: Some(root),
            local_owner,
            describe: url.to_string(),
            multipart_threshold: options.multipart_threshold()?,
        })
    }

    /// `memory://`: object_store's in-memory store (so tests exercise the same code path).
    pub fn memory(url: &url::Url, options: &StorageOptions) -> Result<Self, OpenError> {
        Ok(ObjectStoreBackend {
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix: String::new(),
            local_root: None,
            local_owner: None,
            describe: url.to_string(),
            multipart_threshold: options.multipart_threshold()?,
        })
    }

    /// `s3://`, `gs://` or `az://`.
    pub fn remote(url: &url::Url, options: &StorageOptions) -> Result<Self, OpenError> {
        let bucket = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| OpenError::BadUrl {
                url: url.to_string(),
                why: "missing bucket (container) name, as in s3://bucket/prefix".into(),
            })?;
        let mut prefix = url.path().trim_matches('/').to_string();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        let scheme = url.scheme();
        options.check_scheme(scheme)?;
        let azure_emulator = scheme == "az" && options.flag("use_emulator")?.unwrap_or(false);
        let skip_signature = options.flag("skip_signature")?.unwrap_or(false);
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(15),
                base: 2.0,
            },
            max_retries: options.max_retries()?,
            retry_timeout: options.retry_timeout()?,
        };
        // One ClientOptions carries allow_http and the CA: setting client options replaces
        // earlier ones, so everything goes here (see S3-LOCAL.md).
        let mut client = ClientOptions::new()
            .with_allow_http(options.flag("allow_http")?.unwrap_or(azure_emulator))
            .with_timeout(
                options
                    .duration("request_timeout")?
                    .unwrap_or(Duration::from_secs(120)),
            )
            .with_connect_timeout(
                options
                    .duration("connect_timeout")?
                    .unwrap_or(Duration::from_secs(10)),
            );
        if let Some(ca) = options.get("ca_file") {
            let pem = std::fs::read(ca).map_err(|e| OpenError::BadOption {
                key: "ca_file".into(),
                why: format!("{ca}: {e}"),
            })?;
            for cert in object_store::Certificate::from_pem_bundle(&pem).map_err(|e| {
                OpenError::BadOption {
                    key: "ca_file".into(),
                    why: e.to_string(),
                }
            })? {
                client = client.with_root_certificate(cert);
            }
        }
        if scheme == "s3" && options.get("checksum_algorithm").is_some() {
            // What the AWS SDKs send with a checksum, and what S3 asks for (besides
            // Content-MD5) on uploads into a bucket with an Object Lock default retention.
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "x-amz-sdk-checksum-algorithm",
                http::HeaderValue::from_static("SHA256"),
            );
            client = client.with_default_headers(headers);
        }
        let store: Arc<dyn ObjectStore> = match scheme {
            "s3" => {
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(endpoint) = options.get("endpoint") {
                    b = b.with_endpoint(endpoint);
                }
                b = b.with_region(options.get("region").unwrap_or("us-east-1"));
                // Path style unless asked otherwise: it works with every S3 compatible.
                b = b.with_virtual_hosted_style_request(
                    options.flag("virtual_hosted_style")?.unwrap_or(false),
                );
                if let Some(k) = options.get("access_key_id") {
                    b = b.with_access_key_id(k);
                }
                if let Some(k) = options.get("secret_access_key") {
                    b = b.with_secret_access_key(k);
                }
                if let Some(t) = options.get("session_token") {
                    b = b.with_token(t);
                }
                if skip_signature {
                    b = b.with_skip_signature(true);
                }
                // Buckets with an Object Lock default retention want an integrity header on
                // every upload (Content-MD5 or an x-amz-checksum-*).
                match options.get("checksum_algorithm") {
                    None => {}
                    Some(a) if a.eq_ignore_ascii_case("sha256") => {
                        b = b.with_checksum_algorithm(object_store::aws::Checksum::SHA256);
                    }
                    Some(other) => {
                        return Err(OpenError::BadOption {
                            key: "checksum_algorithm".into(),
                            why: format!("{other:?}: the only algorithm supported is sha256"),
                        })
                    }
                }
                Arc::new(
                    b.with_retry(retry)
                        .with_client_options(client)
                        .build()
                        .map_err(|e| backend_err(url, e))?,
                )
            }
            "gs" => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket);
                if let Some(endpoint) = options.get("endpoint") {
                    b = b.with_base_url(endpoint.trim_end_matches('/'));
                }
                if let Some(p) = options.get("service_account_path") {
                    b = b.with_service_account_path(p);
                }
                if skip_signature {
                    // object_store 0.14 still asks its credential provider for a token on
                    // uploads when signing is skipped, and the default provider is the GCE
                    // metadata server: a static empty token keeps it from being asked.
                    b = b.with_skip_signature(true).with_bearer_token(String::new());
                }
                Arc::new(
                    b.with_retry(retry)
                        .with_client_options(client)
                        .build()
                        .map_err(|e| backend_err(url, e))?,
                )
            }
            "az" => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(bucket);
                let account = options
                    .get("account_name")
                    .or(azure_emulator.then_some(AZURITE_ACCOUNT));
                if let Some(a) = account {
                    b = b.with_account(a);
                }
                let key = options
                    .get("access_key")
                    .or(azure_emulator.then_some(AZURITE_KEY));
                if let Some(k) = key {
                    b = b.with_access_key(k).with_credential_type("access_key");
                }
                if azure_emulator {
                    // Our own emulator mode rather than object_store's, whose endpoint comes
                    // from the environment only: the emulator is addressed path-style, with
                    // the account as the first path segment.
                    let root = options
                        .get("endpoint")
                        .unwrap_or(AZURITE_DEFAULT_ENDPOINT)
                        .trim_end_matches('/');
                    let account = account.unwrap_or(AZURITE_ACCOUNT);
                    b = b
                        .with_use_emulator(false)
                        .with_endpoint(format!("{root}/{account}"));
                } else if let Some(endpoint) = options.get("endpoint") {
                    b = b.with_endpoint(endpoint.trim_end_matches('/').to_string());
                }
                if skip_signature {
                    b = b.with_skip_signature(true);
                }
                Arc::new(
                    b.with_retry(retry)
                        .with_client_options(client)
                        .build()
                        .map_err(|e| backend_err(url, e))?,
                )
            }
            other => {
                return Err(OpenError::BadUrl {
                    url: url.to_string(),
                    why: format!("not a remote scheme: {other}"),
                })
            }
        };
        let mut describe = url.clone();
        let _ = describe.set_password(None);
        let _ = describe.set_username("");
        Ok(ObjectStoreBackend {
            store,
            prefix,
            local_root: None,
            local_owner: None,
            describe: describe.to_string(),
            multipart_threshold: options.multipart_threshold()?,
        })
    }

    fn path(&self, key: &ObjectKey) -> StorePath {
        StorePath::from(format!("{}{}", self.prefix, key.as_str()))
    }

    async fn sync_local(&self, key: &ObjectKey, dirs: Vec<PathBuf>) -> Result<(), StorageError> {
        if let Some(root) = &self.local_root {
            let path = root.join(key.as_str());
            let owner = self.local_owner;
            local_blocking("fsync", key, move || {
                local::sync_file_and_dirs(&path, &dirs, owner)
            })
            .await?;
        }
        Ok(())
    }

    /// A create found `key` taken. A retried request whose first attempt landed looks exactly
    /// like this; so does an identical object written earlier. Both are our object.
    ///
    /// On local disk an empty object is not ours but what a power loss leaves of a create:
    /// the name is linked before the data are synced ([`Self::sync_local`] follows), so after
    /// a crash the name may hold nothing. No repository object is empty, and every retry of
    /// that create (PostgreSQL's `archive-push` of a segment whose record is empty, the
    /// cluster record's first write) found the name taken and failed for ever. It is
    /// replaced, under the compare-and-swap lock and only while still empty
    /// ([`local::cas_write`]).
    async fn compare_existing(
        &self,
        key: &ObjectKey,
        data: &Bytes,
        dirs: Vec<PathBuf>,
    ) -> Result<CreateOutcome, StorageError> {
        match self.get(key).await {
            Ok(existing) if existing == *data => {
                self.sync_local(key, dirs).await?;
                Ok(CreateOutcome::Created)
            }
            Ok(existing) if existing.is_empty() && self.local_root.is_some() => {
                let root = self.local_root.clone().expect("checked in the guard");
                let (k, bytes, owner) = (key.as_str().to_string(), data.clone(), self.local_owner);
                let empty = local::version_of(b"");
                let swapped = local_blocking("put", key, move || {
                    local::cas_write(&root, &k, &bytes, Some(&empty), owner)
                })
                .await;
                match swapped {
                    Ok(_) => {
                        tracing::warn!(
                            "{key} was empty (left by a crash before its create was synced): \
                             written again"
                        );
                        Ok(CreateOutcome::Created)
                    }
                    // Another create replaced it first: compared as any object found.
                    Err(StorageError::Precondition { .. }) => match self.get(key).await? {
                        existing if existing == *data => {
                            self.sync_local(key, dirs).await?;
                            Ok(CreateOutcome::Created)
                        }
                        _ => Ok(CreateOutcome::AlreadyExists),
                    },
                    Err(e) => Err(e),
                }
            }
            Ok(_) => Ok(CreateOutcome::AlreadyExists),
            Err(e) => Err(e),
        }
    }

    /// Creates a large local object past the page cache ([`direct_create`]).
    async fn create_direct(
        &self,
        root: &Path,
        key: &ObjectKey,
        data: &Bytes,
    ) -> Result<Direct, StorageError> {
        let path = root.join(key.as_str());
        let data = data.clone();
        local_blocking("put", key, move || direct_create::create(&path, &data)).await
    }

    fn local_dirs(&self, key: &ObjectKey) -> Vec<PathBuf> {
        match &self.local_root {
            Some(root) => local::dirs_to_sync(root, &root.join(key.as_str())),
            None => Vec::new(),
        }
    }

    async fn put_multipart(&self, key: &ObjectKey, data: Bytes) -> Result<(), StorageError> {
        let upload = self
            .store
            .put_multipart(&self.path(key))
            .await
            .map_err(|e| classify("put", key.as_str(), e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        writer.put(data);
        writer
            .finish()
            .await
            .map_err(|e| classify("put", key.as_str(), e))?;
        Ok(())
    }
}

/// Runs local file system work `f` (for `op` on `key`) on a blocking thread.
async fn local_blocking<T: Send + 'static>(
    op: &'static str,
    key: &ObjectKey,
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Permanent {
            op,
            key: key.to_string(),
            detail: e.to_string(),
        })?
}

#[async_trait]
impl Storage for ObjectStoreBackend {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StorageError> {
        let r = self
            .store
            .get(&self.path(key))
            .await
            .map_err(|e| classify("get", key.as_str(), e))?;
        r.bytes()
            .await
            .map_err(|e| classify("get", key.as_str(), e))
    }

    async fn get_versioned(&self, key: &ObjectKey) -> Result<(Bytes, ObjectVersion), StorageError> {
        let r = self
            .store
            .get(&self.path(key))
            .await
            .map_err(|e| classify("get", key.as_str(), e))?;
        let meta = r.meta.clone();
        let bytes = r
            .bytes()
            .await
            .map_err(|e| classify("get", key.as_str(), e))?;
        let version = if self.local_root.is_some() {
            local::version_of(&bytes)
        } else {
            ObjectVersion(serde_version(
                meta.e_tag.as_deref(),
                meta.version.as_deref(),
            ))
        };
        Ok((bytes, version))
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StorageError> {
        self.store
            .get_range(&self.path(key), range)
            .await
            .map_err(|e| classify("get", key.as_str(), e))
    }

    async fn head(&self, key: &ObjectKey) -> Result<u64, StorageError> {
        Ok(self
            .store
            .head(&self.path(key))
            .await
            .map_err(|e| classify("head", key.as_str(), e))?
            .size)
    }

    async fn put_create(
        &self,
        key: &ObjectKey,
        data: Bytes,
    ) -> Result<CreateOutcome, StorageError> {
        let dirs = self.local_dirs(key);
        if let Some(root) = self
            .local_root
            .as_ref()
            .filter(|_| data.len() >= direct_create::MIN_LEN)
        {
            match self.create_direct(root, key, &data).await? {
                Direct::Created => {
                    self.sync_local(key, dirs).await?;
                    return Ok(CreateOutcome::Created);
                }
                Direct::Exists => return self.compare_existing(key, &data, dirs).await,
                Direct::Unsupported => {}
            }
        }
        if self.local_root.is_none() && data.len() > self.multipart_threshold {
            // Multipart uploads cannot be conditional, so the name is checked first. An object
            // already there is compared like any other create's: a content-addressed name
            // holding other bytes is a damaged object, which the caller must hear about.
            match self.head(key).await {
                Ok(_) => return self.compare_existing(key, &data, dirs).await,
                Err(StorageError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            self.put_multipart(key, data).await?;
            return Ok(CreateOutcome::Created);
        }
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path(key), PutPayload::from_bytes(data.clone()), opts)
            .await
        {
            Ok(_) => {
                self.sync_local(key, dirs).await?;
                Ok(CreateOutcome::Created)
            }
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                self.compare_existing(key, &data, dirs).await
            }
            Err(e) => Err(classify("put", key.as_str(), e)),
        }
    }

    async fn put_swap(
        &self,
        key: &ObjectKey,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> Result<ObjectVersion, StorageError> {
        if let Some(root) = self.local_root.clone() {
            let k = key.as_str().to_string();
            let expected = expected.cloned();
            let owner = self.local_owner;
            return local_blocking("put", key, move || {
                local::cas_write(&root, &k, &data, expected.as_ref(), owner)
            })
            .await;
        }
        let mode = match expected {
            None => PutMode::Create,
            Some(v) => {
                let (e_tag, version) = parse_version(&v.0);
                PutMode::Update(UpdateVersion { e_tag, version })
            }
        };
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path(key), PutPayload::from_bytes(data), opts)
            .await
        {
            Ok(r) => Ok(ObjectVersion(serde_version(
                r.e_tag.as_deref(),
                r.version.as_deref(),
            ))),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Err(StorageError::Precondition {
                key: key.to_string(),
            }),
            Err(e) => Err(classify("put", key.as_str(), e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let path = self.prefix_path(prefix);
        let listed = self.store.list(path.as_ref());
        self.listed(prefix, listed).await
    }

    async fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let path = self.prefix_path(prefix);
        let offset = StorePath::from(format!("{}{}", self.prefix, after));
        let listed = self.store.list_with_offset(path.as_ref(), &offset);
        let mut out = self.listed(prefix, listed).await?;
        // Keys are compared as the store spells them; the contract is our keys' byte order.
        out.retain(|o| o.key.as_str() > after);
        Ok(out)
    }

    async fn sync_existing(&self, key: &ObjectKey) -> Result<Option<Bytes>, StorageError> {
        let Some(root) = self.local_root.clone() else {
            return Ok(None);
        };
        let path = root.join(key.as_str());
        local_blocking("fsync", key, move || local::sync_existing(&root, &path))
            .await
            .map(|b| b.map(Bytes::from))
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(classify("delete", key.as_str(), e)),
        }
    }
}

impl ObjectStoreBackend {
    /// The store's path for a `/`-terminated key prefix (none for the repository's root).
    fn prefix_path(&self, prefix: &str) -> Option<StorePath> {
        let full = format!("{}{}", self.prefix, prefix);
        let trimmed = full.trim_end_matches('/');
        (!trimmed.is_empty()).then(|| StorePath::from(trimmed))
    }

    /// A listing's objects under `prefix`, as repository keys in key order: lock files and
    /// temporary files of local writes left out.
    async fn listed(
        &self,
        prefix: &str,
        listed: futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>,
    ) -> Result<Vec<ObjectInfo>, StorageError> {
        let metas: Vec<object_store::ObjectMeta> = listed
            .try_collect()
            .await
            .map_err(|e| classify("list", prefix, e))?;
        let mut out: Vec<ObjectInfo> = metas
            .into_iter()
            .filter_map(|m| {
                let loc = m.location.to_string();
                let key = loc.strip_prefix(&self.prefix)?.to_string();
                let object = !key.starts_with(local::LOCK_DIR) && !local::is_temporary(&key);
                (object && key.starts_with(prefix)).then(|| ObjectInfo {
                    key: ObjectKey::new(key),
                    size: m.size,
                    modified: Some(m.last_modified.timestamp()),
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// Encodes an e-tag and version as one opaque string.
fn serde_version(e_tag: Option<&str>, version: Option<&str>) -> String {
    format!("{}\n{}", e_tag.unwrap_or(""), version.unwrap_or(""))
}

fn parse_version(v: &str) -> (Option<String>, Option<String>) {
    let (e, ver) = v.split_once('\n').unwrap_or((v, ""));
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    (some(e), some(ver))
}
