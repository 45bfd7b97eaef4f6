//! A small fork-join thread pool for the compute kernels.
//!
//! Why not rayon or candle's pool: kernels here are short (tens of microseconds) and run
//! hundreds of times per engine step, so dispatch must be cheap, but the machine is shared:
//! a pool that spin-waits collapses when its threads outnumber free cores. Workers here spin
//! for a short, bounded time after a job (cheap hand-off between back-to-back kernels) and
//! then sleep on a condition variable.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The job generation a new pool starts at.
const INITIAL_GENERATION: usize = 0;

/// How many spin iterations a worker waits for the next job before sleeping.
const SPIN_ITERATIONS: u32 = 20_000;

/// The number of threads to use when the caller does not say: the physical cores.
///
/// SMT siblings share the vector units the kernels saturate, so they add little and
/// oversubscribe. Falls back to the logical CPU count when topology is unknown.
pub fn default_thread_count() -> usize {
    physical_cores().unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).max(1)
}

#[cfg(target_os = "linux")]
fn physical_cores() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mut cores = std::collections::HashSet::new();
    let mut physical_id = String::new();
    for line in info.lines() {
        let mut parts = line.splitn(2, ':');
        let key = parts.next()?.trim();
        let value = parts.next().unwrap_or("").trim();
        match key {
            "physical id" => physical_id = value.to_string(),
            "core id" => {
                cores.insert((physical_id.clone(), value.to_string()));
            }
            _ => {}
        }
    }
    let logical = std::thread::available_parallelism().map(|n| n.get()).ok()?;
    // Containers often restrict the CPU set below what /proc/cpuinfo lists.
    (!cores.is_empty()).then(|| cores.len().min(logical))
}

#[cfg(not(target_os = "linux"))]
fn physical_cores() -> Option<usize> {
    None
}

type Task = dyn Fn(usize) + Sync;

struct Job {
    /// Type-erased pointer to the caller's closure; valid until `remaining` reaches 0,
    /// because `run` does not return before that.
    task: *const Task,
    n_tasks: usize,
}

// SAFETY: the closure behind `task` is `Sync`, and `run` keeps it alive while workers use it.
unsafe impl Send for Job {}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    done: Condvar,
    generation: AtomicUsize,
    next_task: AtomicUsize,
    remaining: AtomicUsize,
    /// Workers currently holding the job's closure pointer. `run` returns only once this is 0,
    /// so a worker that woke late never touches a closure that is gone or claims tasks of the
    /// next job.
    active: AtomicUsize,
}

struct State {
    job: Option<Job>,
    shutdown: bool,
}

/// A fixed set of worker threads; the calling thread takes part in every job.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n_threads: usize,
    /// Serialises `run` calls from different threads.
    run_lock: Mutex<()>,
}

impl ThreadPool {
    /// A pool using `n_threads` threads in total (the caller plus `n_threads - 1` workers).
    pub fn new(n_threads: usize) -> Self {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State { job: None, shutdown: false }),
            wake: Condvar::new(),
            done: Condvar::new(),
            generation: AtomicUsize::new(INITIAL_GENERATION),
            next_task: AtomicUsize::new(0),
            remaining: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
        });
        let workers = (1..n_threads)
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("cortexstream-worker-{i}"))
                    .spawn(move || worker_loop(&shared))
                    .expect("failed to spawn a thread-pool worker")
            })
            .collect();
        Self { shared, workers, n_threads, run_lock: Mutex::new(()) }
    }

    /// Total threads that work on a job, including the caller.
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Calls `f(i)` once for every `i` in `0..n_tasks`, spread over the pool, and returns when
    /// all calls have finished. Tasks are handed out dynamically, so uneven tasks balance.
    /// A panic in `f` propagates to the caller after the job has finished.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        if self.n_threads == 1 || n_tasks == 1 {
            (0..n_tasks).for_each(f);
            return;
        }
        let _serial = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let shared = &*self.shared;
        // SAFETY: erase the closure's lifetime; we wait below until every worker is done with it.
        let task: *const Task = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Task>(f) };
        shared.next_task.store(0, Ordering::SeqCst);
        shared.remaining.store(n_tasks, Ordering::SeqCst);
        {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            state.job = Some(Job { task, n_tasks });
            shared.generation.fetch_add(1, Ordering::SeqCst);
        }
        shared.wake.notify_all();

        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work_on(shared, f, n_tasks))).is_err();

        // Wait for workers still finishing their last task, retire the job so no late waker
        // picks it up, then wait for workers that already hold it to let go.
        wait_until_zero(shared, &shared.remaining);
        shared.state.lock().unwrap_or_else(|e| e.into_inner()).job = None;
        wait_until_zero(shared, &shared.active);
        if panicked {
            panic!("a thread-pool task panicked");
        }
    }
}

/// Spins briefly, then sleeps on `done`, until `counter` is 0.
fn wait_until_zero(shared: &Shared, counter: &AtomicUsize) {
    let mut spins = 0;
    while counter.load(Ordering::Acquire) != 0 {
        if spins < SPIN_ITERATIONS {
            spins += 1;
            std::hint::spin_loop();
            continue;
        }
        let state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if counter.load(Ordering::Acquire) != 0 {
            let _unused = shared.done.wait(state);
        }
    }
}

/// Claims and runs tasks until none are left. Returns after decrementing `remaining`
/// for each task it ran.
fn work_on(shared: &Shared, f: &(dyn Fn(usize) + Sync), n_tasks: usize) {
    loop {
        let i = shared.next_task.fetch_add(1, Ordering::AcqRel);
        if i >= n_tasks {
            return;
        }
        // Count the task as done even if it panics, so `run` never waits forever.
        struct Done<'a>(&'a Shared);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                if self.0.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    let _guard = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
                    self.0.done.notify_all();
                }
            }
        }
        let _done = Done(shared);
        f(i);
    }
}

fn worker_loop(shared: &Shared) {
    // Start from the generation the pool was created with, not whatever it is when this thread
    // first runs: a job submitted before the thread started must not be mistaken for an old one.
    let mut seen_generation = INITIAL_GENERATION;
    loop {
        // Spin a little for the next job, then sleep.
        let mut spins = 0;
        while shared.generation.load(Ordering::Acquire) == seen_generation && spins < SPIN_ITERATIONS {
            spins += 1;
            std::hint::spin_loop();
        }
        let (task, n_tasks) = {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if state.shutdown {
                    return;
                }
                let generation = shared.generation.load(Ordering::Acquire);
                if generation != seen_generation {
                    seen_generation = generation;
                    if let Some(job) = &state.job {
                        shared.active.fetch_add(1, Ordering::AcqRel);
                        break (job.task, job.n_tasks);
                    }
                    // The job already finished before we woke; wait for the next one.
                    continue;
                }
                state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
        // SAFETY: `run` keeps the closure alive until `remaining` hits 0, and we only touch
        // it through `work_on`, which claims tasks that are still outstanding.
        let f = unsafe { &*task };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work_on(shared, f, n_tasks)));
        if shared.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _guard = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            shared.done.notify_all();
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner()).shutdown = true;
        self.shared.wake.notify_all();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool").field("n_threads", &self.n_threads).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_task_once() {
        let pool = ThreadPool::new(3);
        for n in [0usize, 1, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn many_back_to_back_jobs() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        for _ in 0..2000 {
            pool.run(4, &|i| {
                total.fetch_add(i, Ordering::Relaxed);
            });
        }
        assert_eq!(total.load(Ordering::Relaxed), 2000 * 6);
    }

    #[test]
    fn task_panic_propagates_and_pool_survives() {
        let pool = ThreadPool::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(8, &|i| {
                if i == 3 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.run(8, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 8);
    }
}
