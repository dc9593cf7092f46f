//! A small pool of low-priority threads for per-request work too heavy for the async
//! workers: parsing multi-megabyte bodies and counting their tokens.
//!
//! Why not `spawn_blocking`: that pool grows to hundreds of threads at normal priority,
//! so a flood of large requests would take every core from the small ones. Here the
//! work runs on at most half the cores, at a lower scheduling priority (nice +10, set per
//! thread), behind a short bounded queue: a request that finds the queue full is told
//! so at once ([`Busy`]) instead of waiting with its body in memory. Small requests,
//! which never come here, keep the async workers and the CPU.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};

/// The queue was full: too much heavy work is already waiting.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the gateway is busy with other large requests")]
pub struct Busy;

type Job = Box<dyn FnOnce() + Send>;

/// Nice value of the pool's threads (higher = lower priority than the async workers).
const NICE: i32 = 10;
/// Jobs that may wait per thread.
const QUEUE_PER_THREAD: usize = 8;

struct Pool {
    tx: SyncSender<Job>,
}

impl Pool {
    /// `threads` low-priority threads behind a queue of `threads * queue_per_thread`.
    fn new(threads: usize, queue_per_thread: usize) -> Pool {
        let (tx, rx) = sync_channel::<Job>(threads * queue_per_thread);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            // If a thread cannot be started the others serve; with none, run() reports
            // Busy once the queue fills, never hangs.
            let _ = std::thread::Builder::new()
                .name(format!("llmgw-heavy-{i}"))
                .spawn(move || worker(&rx));
        }
        Pool { tx }
    }

    async fn run<T, F>(&self, f: F) -> Result<T, Busy>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => return Err(Busy),
        }
        rx.await.map_err(|_| Busy)
    }
}

/// The gateway's pool: half the cores.
fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Pool::new((cores / 2).max(1), QUEUE_PER_THREAD)
    })
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    lower_priority();
    loop {
        // The lock is held only while waiting for the next job, by pool threads only.
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

/// Lowers this thread's (not the process's) scheduling priority. Best effort: raising
/// one's own nice value needs no privilege, and failing only means normal priority.
fn lower_priority() {
    let tid = nix::unistd::gettid().as_raw();
    // SAFETY: setpriority has no memory effects; on Linux PRIO_PROCESS with a thread id
    // sets that thread's nice value.
    unsafe {
        nix::libc::setpriority(nix::libc::PRIO_PROCESS, tid as nix::libc::id_t, NICE);
    }
}

/// Runs `f` on the pool and waits for its result without blocking an async worker.
/// [`Busy`] when the queue is full (or the pool is gone).
pub async fn run<T, F>(f: F) -> Result<T, Busy>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    pool().run(f).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn runs_jobs_at_lower_priority() {
        let nice = run(|| {
            let tid = nix::unistd::gettid().as_raw();
            // SAFETY: as above, a read of the thread's nice value.
            unsafe { nix::libc::getpriority(nix::libc::PRIO_PROCESS, tid as nix::libc::id_t) }
        })
        .await
        .unwrap();
        assert!(nice >= NICE, "pool thread nice {nice}");
    }

    #[tokio::test]
    async fn a_full_queue_says_busy_at_once() {
        // One thread, a queue of two: three slow jobs fill it, the next is Busy.
        let pool = Arc::new(Pool::new(1, 2));
        let mut waiting = Vec::new();
        for _ in 0..6 {
            let pool = Arc::clone(&pool);
            waiting.push(tokio::spawn(async move {
                pool.run(|| std::thread::sleep(Duration::from_millis(300)))
                    .await
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t = std::time::Instant::now();
        assert!(pool.run(|| ()).await.is_err(), "expected Busy");
        assert!(t.elapsed() < Duration::from_millis(50));
        let results = futures_util::future::join_all(waiting).await;
        assert!(results.iter().any(|r| matches!(r, Ok(Err(Busy)))));
        assert!(results.iter().any(|r| matches!(r, Ok(Ok(())))));
    }
}
