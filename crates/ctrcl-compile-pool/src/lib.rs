//! A pool that runs each keyed job at most once on its own threads and hands the result to the
//! one who takes it — the concurrency half of ctrcl's parallel kernel compilation (issue #17).
//!
//! cubecl compiles a GPU kernel on the device's one server thread when the server first meets its
//! launch, so a cold start compiles hundreds of kernels in a row on one core. Burn's client thread
//! queues launches without waiting for them, so it sees the kernels first. ctrcl's patched
//! cubecl-cuda (`third_party/cubecl-cuda/src/compute/precompile.rs`) therefore
//! [`submits`](CompilePool::submit_once) each kernel to this pool from the client thread (keyed
//! by kernel id), and the server [`takes`](CompilePool::take) the result when it reaches the
//! launch, waiting only if the job is still running. This crate holds everything about threads
//! and waiting, so that it is tested here without a GPU; the CUDA side only says what a job does.
//!
//! Guarantees (each tested below):
//! - a key is run at most once, however many threads submit it, and never if `skip` says so;
//! - [`take`](CompilePool::take) returns the job's result once, waiting for it if needed, and
//!   `None` for a key that was never queued or was already taken;
//! - jobs run concurrently on up to `threads` threads;
//! - a job that panics gives [`JobPanicked`] to its taker; the pool keeps working;
//! - no deadlock: the pool's threads never wait on a submitter or a taker.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Condvar, Mutex};

/// The job panicked; the message if it was a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPanicked(pub String);

type Outcome<T> = Result<T, JobPanicked>;

/// One job's result, filled by a pool thread and waited for by its taker.
struct Slot<T> {
    outcome: Mutex<Option<Outcome<T>>>,
    done: Condvar,
}

impl<T> Slot<T> {
    fn wait(&self) -> Outcome<T> {
        let mut guard = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(outcome) = guard.take() {
                return outcome;
            }
            guard = self.done.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn fill(&self, outcome: Outcome<T>) {
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
        self.done.notify_all();
    }
}

type Job<T> = Box<dyn FnOnce() -> T + Send>;
/// A queued job and the slot its result goes to.
type Queued<T> = (Job<T>, Arc<Slot<T>>);

struct Registry<K, T> {
    /// Every key submitted so far (queued, finished, taken or skipped).
    seen: HashSet<K>,
    /// Queued or finished jobs not taken yet.
    pending: HashMap<K, Arc<Slot<T>>>,
}

struct Shared<K, T> {
    registry: Mutex<Registry<K, T>>,
    queue: Mutex<VecDeque<Queued<T>>>,
    work: Condvar,
}

/// Runs keyed jobs once each on a fixed set of threads. Cloning shares the pool.
pub struct CompilePool<K, T> {
    shared: Arc<Shared<K, T>>,
    threads: usize,
}

impl<K, T> Clone for CompilePool<K, T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            threads: self.threads,
        }
    }
}

impl<K, T> std::fmt::Debug for CompilePool<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompilePool")
            .field("threads", &self.threads)
            .finish()
    }
}

/// Stack of each pool thread: compilers (NVRTC is LLVM) recurse deeply on large kernels; this
/// is reserved address space, not memory used.
const STACK_BYTES: usize = 16 << 20;

impl<K, T> CompilePool<K, T>
where
    K: Eq + Hash + Clone + Send + 'static,
    T: Send + 'static,
{
    /// Starts `threads` (≥ 1) threads named `{name}-{i}`. Fails only if the first cannot start;
    /// fewer are kept if a later one cannot.
    pub fn new(threads: usize, name: &str) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            registry: Mutex::new(Registry {
                seen: HashSet::new(),
                pending: HashMap::new(),
            }),
            queue: Mutex::new(VecDeque::new()),
            work: Condvar::new(),
        });
        let mut started = 0;
        for i in 0..threads.max(1) {
            let worker_shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .stack_size(STACK_BYTES)
                .spawn(move || worker(worker_shared));
            match spawned {
                Ok(_) => started += 1,
                Err(err) if started == 0 => return Err(err),
                Err(_) => break,
            }
        }
        Ok(Self {
            shared,
            threads: started,
        })
    }

    /// The threads running jobs.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Queues `job` under `key` unless the key was submitted before or `skip(&key)` says to
    /// leave it (evaluated under the pool's lock, once per key). Returns whether it was queued.
    pub fn submit_once(
        &self,
        key: K,
        skip: impl FnOnce(&K) -> bool,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> bool {
        let mut registry = self
            .shared
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if registry.seen.contains(&key) {
            return false;
        }
        registry.seen.insert(key.clone());
        if skip(&key) {
            return false;
        }
        let slot = Arc::new(Slot {
            outcome: Mutex::new(None),
            done: Condvar::new(),
        });
        registry.pending.insert(key, slot.clone());
        drop(registry);
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((Box::new(job), slot));
        self.shared.work.notify_one();
        true
    }

    /// The result of the job queued under `key`, waiting for it if it is still queued or
    /// running; `None` if no job was queued under `key` or its result was taken already.
    pub fn take(&self, key: &K) -> Option<Outcome<T>> {
        let slot = self
            .shared
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .remove(key)?;
        Some(slot.wait())
    }
}

fn worker<K, T>(shared: Arc<Shared<K, T>>) {
    loop {
        let (job, slot) = {
            let mut queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(next) = queue.pop_front() {
                    break next;
                }
                queue = shared.work.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
        };
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).map_err(|payload| {
                JobPanicked(
                    payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_default(),
                )
            });
        slot.fill(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Barrier};
    use std::time::Duration;

    #[test]
    fn a_result_is_taken_once_and_unknown_keys_give_none() {
        let pool = CompilePool::new(2, "t").unwrap();
        assert!(pool.submit_once(1u32, |_| false, || "one"));
        assert_eq!(pool.take(&1), Some(Ok("one")));
        assert_eq!(pool.take(&1), None, "taken already");
        assert_eq!(pool.take(&2), None, "never submitted");
    }

    /// The taker waits for a job still running: the job is held until after `take` began.
    #[test]
    fn take_waits_for_a_running_job() {
        let pool = CompilePool::new(1, "t").unwrap();
        let (release, hold) = mpsc::channel::<()>();
        pool.submit_once(
            7u32,
            |_| false,
            move || {
                hold.recv().unwrap();
                42
            },
        );
        let taker = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.take(&7))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!taker.is_finished(), "take returned before the job ended");
        release.send(()).unwrap();
        assert_eq!(taker.join().unwrap(), Some(Ok(42)));
    }

    /// Submitted from 8 threads 100 times each, every key runs exactly once.
    #[test]
    fn each_key_runs_once_whoever_submits_it() {
        let pool = CompilePool::new(4, "t").unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let submitters: Vec<_> = (0..8)
            .map(|_| {
                let (pool, runs) = (pool.clone(), runs.clone());
                std::thread::spawn(move || {
                    (0..100u32)
                        .filter(|&key| {
                            let runs = runs.clone();
                            pool.submit_once(
                                key,
                                |_| false,
                                move || {
                                    runs.fetch_add(1, Ordering::SeqCst);
                                    key * 2
                                },
                            )
                        })
                        .count()
                })
            })
            .collect();
        let queued: usize = submitters.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(queued, 100);
        for key in 0..100u32 {
            assert_eq!(pool.take(&key), Some(Ok(key * 2)));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 100);
    }

    #[test]
    fn a_skipped_key_is_never_run_nor_asked_again() {
        let pool = CompilePool::new(2, "t").unwrap();
        let asked = AtomicUsize::new(0);
        let skip = |_: &u32| {
            asked.fetch_add(1, Ordering::SeqCst);
            true
        };
        assert!(!pool.submit_once(3u32, skip, || unreachable!("skipped")));
        assert!(!pool.submit_once(3u32, skip, || unreachable!("skipped")));
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert_eq!(pool.take(&3), None);
    }

    /// Four jobs that each wait for all four to have started can only finish on four threads
    /// at once; a serial pool would hang (caught by the timeout, not by hanging the test).
    #[test]
    fn jobs_run_concurrently() {
        let pool = CompilePool::new(4, "t").unwrap();
        assert_eq!(pool.threads(), 4);
        let barrier = Arc::new(Barrier::new(4));
        for key in 0..4u32 {
            let barrier = barrier.clone();
            pool.submit_once(
                key,
                |_| false,
                move || {
                    barrier.wait();
                    key
                },
            );
        }
        let (done, finished) = mpsc::channel();
        let taker = pool.clone();
        std::thread::spawn(move || {
            let all: Vec<_> = (0..4u32).map(|k| taker.take(&k)).collect();
            done.send(all).unwrap();
        });
        let all = finished
            .recv_timeout(Duration::from_secs(10))
            .expect("the four jobs did not run at the same time");
        assert_eq!(all, (0..4).map(|k| Some(Ok(k))).collect::<Vec<_>>());
    }

    #[test]
    fn a_panicking_job_reports_and_the_pool_goes_on() {
        let pool = CompilePool::new(1, "t").unwrap();
        pool.submit_once(1u32, |_| false, || -> u32 { panic!("bad kernel") });
        pool.submit_once(2u32, |_| false, || 2);
        assert_eq!(pool.take(&1), Some(Err(JobPanicked("bad kernel".into()))));
        assert_eq!(pool.take(&2), Some(Ok(2)));
    }
}
