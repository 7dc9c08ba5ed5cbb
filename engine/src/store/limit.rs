//! A storage wrapper bounding how many requests a process has in flight
//! (`[repo] max_requests`).
//!
//! Each command sizes its own parallelism (`--jobs`, the restore's range reads, the pusher's
//! workers), which suits a local disk and a dedicated bucket. An object store shared with
//! other tenants, a rate-limited gateway or a small MinIO may answer a burst with throttling
//! (S3's 503 SlowDown) or time-outs; capping requests per process below the store is the one
//! place that holds for every command at once, whatever its own settings. A request waits for
//! a permit before it starts and keeps it until its answer is read (a listing's pages, a
//! range read's body), so the cap is on requests the store is working on.
//!
//! Unlike most wrappers it changes every operation, so it states each one: a storage operation
//! added later is forwarded uncapped by [`crate::storage::StorageWrapper`]'s default until it
//! is added here too.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::storage::{CreateOutcome, ObjectInfo, ObjectKey, ObjectVersion, Storage, StorageError};

/// At most `max` requests to `inner` at a time.
#[derive(Debug)]
pub struct Limited {
    inner: Arc<dyn Storage>,
    permits: Semaphore,
    max: usize,
}

impl Limited {
    /// Wraps `inner`; `max` is at least 1.
    pub fn new(inner: Arc<dyn Storage>, max: usize) -> Self {
        let max = max.max(1);
        Limited {
            inner,
            permits: Semaphore::new(max),
            max,
        }
    }

    async fn permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        // Never closed: acquire fails only on a closed semaphore.
        self.permits
            .acquire()
            .await
            .expect("the request semaphore is never closed")
    }
}

#[async_trait]
impl crate::storage::StorageWrapper for Limited {
    fn inner(&self) -> &dyn Storage {
        &*self.inner
    }

    fn describe(&self) -> String {
        format!(
            "{} (at most {} requests at a time)",
            self.inner.describe(),
            self.max
        )
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StorageError> {
        let _p = self.permit().await;
        self.inner.get(key).await
    }

    async fn get_versioned(&self, key: &ObjectKey) -> Result<(Bytes, ObjectVersion), StorageError> {
        let _p = self.permit().await;
        self.inner.get_versioned(key).await
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StorageError> {
        let _p = self.permit().await;
        self.inner.get_range(key, range).await
    }

    async fn head(&self, key: &ObjectKey) -> Result<u64, StorageError> {
        let _p = self.permit().await;
        self.inner.head(key).await
    }

    async fn put_create(
        &self,
        key: &ObjectKey,
        data: Bytes,
    ) -> Result<CreateOutcome, StorageError> {
        let _p = self.permit().await;
        self.inner.put_create(key, data).await
    }

    async fn put_swap(
        &self,
        key: &ObjectKey,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> Result<ObjectVersion, StorageError> {
        let _p = self.permit().await;
        self.inner.put_swap(key, data, expected).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let _p = self.permit().await;
        self.inner.list(prefix).await
    }

    async fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let _p = self.permit().await;
        self.inner.list_after(prefix, after).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        let _p = self.permit().await;
        self.inner.delete(key).await
    }

    async fn sync_existing(&self, key: &ObjectKey) -> Result<Option<Bytes>, StorageError> {
        let _p = self.permit().await;
        self.inner.sync_existing(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Counts the requests in flight and the most seen at once; each takes 20 ms.
    #[derive(Debug, Default)]
    struct Slow {
        mem: MemoryStorage,
        now: AtomicUsize,
        most: AtomicUsize,
    }

    impl Slow {
        async fn busy(&self) {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl crate::storage::StorageWrapper for Slow {
        fn inner(&self) -> &dyn Storage {
            &self.mem
        }
        fn describe(&self) -> String {
            "slow".into()
        }
        async fn get(&self, key: &ObjectKey) -> Result<Bytes, StorageError> {
            self.busy().await;
            self.mem.get(key).await
        }
        async fn get_versioned(
            &self,
            key: &ObjectKey,
        ) -> Result<(Bytes, ObjectVersion), StorageError> {
            self.busy().await;
            self.mem.get_versioned(key).await
        }
        async fn get_range(
            &self,
            key: &ObjectKey,
            range: Range<u64>,
        ) -> Result<Bytes, StorageError> {
            self.busy().await;
            self.mem.get_range(key, range).await
        }
        async fn head(&self, key: &ObjectKey) -> Result<u64, StorageError> {
            self.busy().await;
            self.mem.head(key).await
        }
        async fn put_create(
            &self,
            key: &ObjectKey,
            data: Bytes,
        ) -> Result<CreateOutcome, StorageError> {
            self.busy().await;
            self.mem.put_create(key, data).await
        }
        async fn put_swap(
            &self,
            key: &ObjectKey,
            data: Bytes,
            expected: Option<&ObjectVersion>,
        ) -> Result<ObjectVersion, StorageError> {
            self.busy().await;
            self.mem.put_swap(key, data, expected).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
            self.busy().await;
            self.mem.list(prefix).await
        }
        async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
            self.busy().await;
            self.mem.delete(key).await
        }
    }

    async fn most_in_flight(limit: Option<usize>) -> usize {
        let slow = Arc::new(Slow::default());
        let storage: Arc<dyn Storage> = match limit {
            Some(n) => Arc::new(Limited::new(slow.clone(), n)),
            None => slow.clone(),
        };
        let calls = (0..24).map(|i| {
            let s = storage.clone();
            tokio::spawn(async move {
                let key = ObjectKey::new(format!("k/{i}"));
                s.put_create(&key, Bytes::from_static(b"x")).await.unwrap();
                assert_eq!(s.get(&key).await.unwrap(), Bytes::from_static(b"x"));
                s.list("k/").await.unwrap();
            })
        });
        for c in calls.collect::<Vec<_>>() {
            c.await.unwrap();
        }
        slow.most.load(Ordering::SeqCst)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn requests_in_flight_never_exceed_the_limit() {
        assert!(most_in_flight(None).await > 3, "the calls do overlap");
        assert_eq!(most_in_flight(Some(3)).await, 3);
        assert_eq!(most_in_flight(Some(1)).await, 1);
    }
}
