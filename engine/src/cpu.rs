//! CPU-bound work off the async runtime.
//!
//! Sealing, opening, compressing and hashing run for milliseconds per call; on a tokio worker
//! they would stall every other task of the command (the uploads and downloads that keep the
//! network busy). They run on rayon threads instead, and the async side awaits a oneshot
//! channel. [`run`] uses rayon's global pool, one thread per core, which suits commands that
//! are mostly waiting on storage. A restore writes files as fast as it can open blocks and
//! keeps its I/O threads busy too, so it owns a [`CpuPool`] with more threads than cores:
//! blocks keep being opened while other threads wait on their writes.

/// Runs `f` on rayon's global pool and awaits its result. A panic in `f` is re-raised here.
pub(crate) async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    wait_for(rayon::spawn, f).await
}

/// A pool of its own, for work that must not queue behind the global pool's.
pub(crate) struct CpuPool(rayon::ThreadPool);

impl CpuPool {
    /// `threads` threads named `pgcairn-<name>-<n>`.
    pub(crate) fn new(name: &'static str, threads: usize) -> std::io::Result<Self> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(move |i| format!("pgcairn-{name}-{i}"))
            .build()
            .map(CpuPool)
            .map_err(std::io::Error::other)
    }

    /// Runs `f` on this pool and awaits its result. A panic in `f` is re-raised here.
    pub(crate) async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        wait_for(|job| self.0.spawn(job), f).await
    }
}

/// Hands `f` to `spawn` and awaits its result; the panic of a job that died carries its own
/// message, re-raised on the awaiting task so the command fails where it would have.
async fn wait_for<T: Send + 'static>(
    spawn: impl FnOnce(Box<dyn FnOnce() + Send>),
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawn(Box::new(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    }));
    match rx.await.expect("a CPU job always sends its outcome") {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn results_come_back_from_both_pools() {
        assert_eq!(run(|| 6 * 7).await, 42);
        let pool = CpuPool::new("test", 2).unwrap();
        let name = pool
            .run(|| std::thread::current().name().map(str::to_owned))
            .await;
        assert!(name.unwrap().starts_with("pgcairn-test-"));
    }

    #[tokio::test]
    async fn a_panicking_job_panics_the_awaiting_task_with_its_message() {
        let res = tokio::spawn(run(|| -> u8 { panic!("boom in a CPU job") })).await;
        let panic = res.unwrap_err().into_panic();
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned());
        assert_eq!(msg.as_deref(), Some("boom in a CPU job"));
    }
}
