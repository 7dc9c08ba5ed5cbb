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

/// Runs `f`, which blocks its thread for a while (a sort, a spill to local disk), where it is
/// called, from code that has no `await` to hand it elsewhere. On a worker of the
/// multi-threaded runtime (every command's), the worker first hands its queued tasks to
/// another thread ([`tokio::task::block_in_place`]): a lease refresh or a download does not
/// wait behind it. Elsewhere (a blocking or CPU thread, a single-threaded test runtime) `f`
/// just runs.
pub(crate) fn in_place<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// A pool of its own, for work that must not queue behind the global pool's.
///
/// Not a rayon pool: an idle rayon thread spins (`sched_yield`) for a while before it sleeps,
/// and a restore's or a backup's threads go idle between every two jobs (each waits for a
/// read or a write). On two cores a profile of a restore counted 36 000 `sched_yield` calls,
/// CPU taken from the threads with work. These threads block on a channel as soon as it is
/// empty.
pub(crate) struct CpuPool {
    jobs: std::sync::mpsc::Sender<Job>,
}

type Job = Box<dyn FnOnce() + Send>;

impl CpuPool {
    /// `threads` threads named `pgcairn-<name>-<n>`. They end once the pool is dropped and
    /// the jobs already handed to them are done.
    pub(crate) fn new(name: &'static str, threads: usize) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("pgcairn-{name}-{i}"))
                .spawn(move || loop {
                    // The lock is held only while taking a job: the others wait on it asleep.
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return, // the pool was dropped
                    }
                })?;
        }
        Ok(CpuPool { jobs: tx })
    }

    /// Runs `f` on this pool and awaits its result. A panic in `f` is re-raised here.
    pub(crate) async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        wait_for(
            |job| {
                // The threads only stop once every sender is gone, and this one is alive.
                self.jobs.send(job).expect("the pool's threads outlive it");
            },
            f,
        )
        .await
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn blocking_in_place_leaves_the_other_tasks_running() {
        // One task blocks the only worker for a while; a timer task spawned before it must
        // still fire on time (without `block_in_place` nothing else runs meanwhile).
        let ticks = tokio::spawn(async {
            let mut n = 0;
            for _ in 0..10 {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                n += 1;
            }
            n
        });
        let blocked = tokio::spawn(async {
            in_place(|| std::thread::sleep(std::time::Duration::from_millis(600)));
        });
        let n = tokio::time::timeout(std::time::Duration::from_millis(500), ticks)
            .await
            .expect("the timer task was not held up by the blocked worker")
            .unwrap();
        assert_eq!(n, 10);
        blocked.await.unwrap();
    }

    #[tokio::test]
    async fn in_place_runs_on_a_single_threaded_runtime_too() {
        assert_eq!(in_place(|| 5), 5);
    }

    #[tokio::test]
    async fn a_pool_thread_survives_a_panicking_job() {
        // One thread: had the panic ended it, the next job would wait forever.
        let pool = CpuPool::new("test", 1).unwrap();
        let first = std::panic::AssertUnwindSafe(pool.run(|| -> u8 { panic!("boom") }));
        assert!(futures::FutureExt::catch_unwind(first).await.is_err());
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), pool.run(|| 7));
        assert_eq!(next.await.expect("the pool still runs jobs"), 7);
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
