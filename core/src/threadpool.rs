//! A small fork-join thread pool for the compute kernels.
//!
//! Why not rayon or candle's pool: kernels here are short (tens of microseconds) and run
//! hundreds of times per engine step, so dispatch must be cheap, but the machine is shared:
//! a pool that spin-waits collapses when its threads outnumber free cores. Workers here spin
//! for a short, bounded time after a job (cheap hand-off between back-to-back kernels) and
//! then sleep on a condition variable.
//!
//! The hot path takes no lock and makes no system call: a job is published through atomics
//! that spinning workers read directly, and a condition variable is notified only when a
//! thread is known to sleep on it (a counter of sleeping workers, a flag for a sleeping
//! caller). Each such hand-shake is a store then a load on both sides, all `SeqCst`, so at
//! least one side sees the other: either the waker sees the sleeper and notifies under the
//! lock, or the sleeper sees the change before it sleeps.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// The job generation a new pool starts at; no job ever has it, so `live` holds it when no
/// job may be joined.
const INITIAL_GENERATION: usize = 0;

/// How many spin iterations a worker waits for the next job before sleeping.
const SPIN_ITERATIONS: u32 = 20_000;

/// While spinning, a thread yields its CPU once every this many iterations (about 13 µs of
/// `pause` on Zen 4). On a quiet machine the yield returns at once; on one where the pool's
/// threads outnumber the free cores it lets the thread being waited for run instead of
/// the spinner.
const SPINS_PER_YIELD: u32 = 512;

/// One iteration of a spin-wait: a `pause`, and now and then a yield of the CPU.
#[inline]
fn spin_once(spins: u32) {
    if spins % SPINS_PER_YIELD == SPINS_PER_YIELD - 1 {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// The number of threads to use when the caller does not say: the physical cores, at most the
/// CPUs this process may run on.
///
/// SMT siblings share the vector units the kernels saturate, so they add little and
/// oversubscribe. `num_cpus` reads the topology (falling back to the logical count when it is
/// unknown); containers and `taskset` often restrict the CPU set below what it lists.
pub fn default_thread_count() -> usize {
    let usable = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    num_cpus::get_physical().min(usable).max(1)
}

type Task = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped once per job; a worker waits for it to move past the last job it saw.
    generation: AtomicUsize,
    /// The generation of the job workers may still join, or [`INITIAL_GENERATION`] once `run`
    /// has retired it. A worker joins only after counting itself in `active` and then seeing
    /// its generation here, so `run`, which retires the job before waiting for `active` to
    /// reach 0, never returns while a worker can still touch the job.
    live: AtomicUsize,
    /// The job's closure: points at the caller's `&dyn Fn` on `run`'s stack (a thin pointer
    /// to the fat one), valid while the job is live or a worker is active in it.
    task: AtomicPtr<&'static Task>,
    n_tasks: AtomicUsize,
    next_task: AtomicUsize,
    /// Tasks not finished yet.
    remaining: AtomicUsize,
    /// Workers currently holding the job's closure pointer.
    active: AtomicUsize,
    /// Workers registered as asleep on `wake` (or about to be): a new job notifies only when
    /// this is not 0, and then sets it to 0, so a worker slow to wake up (on a loaded machine,
    /// for many jobs) costs one system call, not one per job. Changed only under `sleep_lock`.
    sleepers: AtomicUsize,
    /// Whether the caller sleeps (or is about to) on `done`: a finishing worker notifies only
    /// then.
    caller_sleeping: AtomicBool,
    shutdown: AtomicBool,
    /// Held from a sleeper's last check until it waits, and by a waker while it notifies, so no
    /// notification falls between the two. Counts the notifications of `wake`: a worker whose
    /// registration a notification cleared sees the count change.
    sleep_lock: Mutex<u64>,
    wake: Condvar,
    done: Condvar,
    /// The message of the first task of the current job that panicked, on any thread. A task
    /// that panics leaves its output unwritten, so `run` must not return normally after it.
    panic_message: Mutex<Option<String>>,
}

impl Shared {
    /// Records a task's panic (the first one per job wins) and drops its payload.
    fn record_panic(&self, payload: Box<dyn Any + Send>) {
        let message = describe_panic(payload);
        let mut slot = self.panic_message.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(message);
    }

    fn take_panic(&self) -> Option<String> {
        self.panic_message.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn lock_sleep(&self) -> MutexGuard<'_, u64> {
        self.sleep_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decrements `counter` (a worker's share of `remaining` or `active`) and wakes the caller
    /// if it reached 0 while the caller sleeps on it.
    fn count_down(&self, counter: &AtomicUsize) {
        if counter.fetch_sub(1, Ordering::SeqCst) == 1 && self.caller_sleeping.load(Ordering::SeqCst) {
            let _guard = self.lock_sleep();
            self.done.notify_all();
        }
    }
}

/// The text of a panic payload. The payload is dropped here, under `catch_unwind`, because a
/// payload's destructor may itself panic and must not kill the thread that caught it.
fn describe_panic(mut payload: Box<dyn Any + Send>) -> String {
    let message = crate::engine::sequence::panic_message(&payload);
    while let Err(next) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        payload = next;
    }
    message
}

/// The most threads a pool accepts: far above any core count, low enough that a mistaken
/// value fails cleanly instead of exhausting the machine's threads or memory.
pub const MAX_THREADS: usize = 1024;

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("{requested} threads requested; at most {MAX_THREADS} are supported")]
    TooManyThreads { requested: usize },
    #[error("could not start thread-pool worker {index} of {requested} threads: {source}")]
    Spawn {
        /// The worker that failed (1-based; thread 0 is the caller).
        index: usize,
        requested: usize,
        #[source]
        source: std::io::Error,
    },
}

/// A fixed set of worker threads; the calling thread takes part in every job.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n_threads: usize,
    /// Serialises `run` calls from different threads.
    run_lock: Mutex<()>,
    /// Test-only fault: the next job's first task panics on a worker (see
    /// [`ThreadPool::panic_in_next_job_for_testing`]).
    inject_panic: AtomicBool,
    /// Jobs handed to the workers so far (see [`ThreadPool::dispatched_jobs`]).
    dispatched: AtomicUsize,
}

impl ThreadPool {
    /// A pool using `n_threads` threads in total (the caller plus `n_threads - 1` workers).
    ///
    /// Fails above [`MAX_THREADS`] or when the operating system refuses a thread; the
    /// workers already started are then stopped and joined before returning.
    pub fn new(n_threads: usize) -> Result<Self, PoolError> {
        Self::with_spawner(n_threads, |name, body| std::thread::Builder::new().name(name).spawn(body))
    }

    /// [`ThreadPool::new`] with the thread creation passed in, so tests can make it fail.
    fn with_spawner(
        n_threads: usize,
        mut spawn: impl FnMut(String, Box<dyn FnOnce() + Send>) -> std::io::Result<JoinHandle<()>>,
    ) -> Result<Self, PoolError> {
        if n_threads > MAX_THREADS {
            return Err(PoolError::TooManyThreads { requested: n_threads });
        }
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(INITIAL_GENERATION),
            live: AtomicUsize::new(INITIAL_GENERATION),
            task: AtomicPtr::new(std::ptr::null_mut()),
            n_tasks: AtomicUsize::new(0),
            next_task: AtomicUsize::new(0),
            remaining: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            caller_sleeping: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleep_lock: Mutex::new(0),
            wake: Condvar::new(),
            done: Condvar::new(),
            panic_message: Mutex::new(None),
        });
        // Built before the workers, so that on a spawn failure dropping it shuts down and
        // joins the workers started so far.
        let mut pool = Self {
            shared,
            workers: Vec::with_capacity(n_threads - 1),
            n_threads,
            run_lock: Mutex::new(()),
            inject_panic: AtomicBool::new(false),
            dispatched: AtomicUsize::new(0),
        };
        for index in 1..n_threads {
            let shared = Arc::clone(&pool.shared);
            let worker = spawn(format!("cortexstream-worker-{index}"), Box::new(move || worker_loop(&shared)))
                .map_err(|source| PoolError::Spawn { index, requested: n_threads, source })?;
            pool.workers.push(worker);
        }
        Ok(pool)
    }

    /// Test-only fault hook: the first task of the next job panics, on a worker thread when
    /// the pool has one (the caller then runs no task of that job). Lets tests check that a
    /// worker's panic fails the computation instead of leaving its output unwritten.
    #[doc(hidden)]
    pub fn panic_in_next_job_for_testing(&self) {
        self.inject_panic.store(true, Ordering::Release);
    }

    /// Whether the test-only fault is armed; disarms it. A plain load first keeps the common
    /// path free of a read-modify-write.
    fn take_injected_panic(&self) -> bool {
        self.inject_panic.load(Ordering::Relaxed) && self.inject_panic.swap(false, Ordering::AcqRel)
    }

    /// Total threads that work on a job, including the caller.
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// How many jobs this pool has handed to its workers so far: each is a publication, a
    /// wake-up and a wait for the last task, the cost a step's row-wise passes are fused to
    /// save (a `run` the caller does alone, with one thread or one task, is not counted).
    pub fn dispatched_jobs(&self) -> usize {
        self.dispatched.load(Ordering::Relaxed)
    }

    /// Calls `f(i)` once for every `i` in `0..n_tasks`, spread over the pool, and returns when
    /// all calls have finished. Tasks are handed out dynamically, so uneven tasks balance.
    /// A panic in `f`, on the caller or on a worker, propagates to the caller (with the task's
    /// message) after the job has finished; the pool stays usable.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        if self.take_injected_panic() {
            let faulty = |i: usize| {
                if i == 0 {
                    panic!("injected thread-pool fault (test hook)");
                }
                f(i)
            };
            return self.run_job(n_tasks, &faulty, self.n_threads == 1);
        }
        if self.n_threads == 1 || n_tasks == 1 {
            (0..n_tasks).for_each(f);
            return;
        }
        self.run_job(n_tasks, f, true);
    }

    /// Hands the job to the workers, takes part in it when `caller_works`, waits until every
    /// task and every worker is done, then re-raises a task's panic.
    fn run_job(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync), caller_works: bool) {
        let _serial = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.dispatched.fetch_add(1, Ordering::Relaxed);
        let shared = &*self.shared;
        // SAFETY: erase the closure's lifetime; the job is retired and every worker is done
        // with it before this function returns (and `task` goes out of scope).
        let task: &'static Task = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Task>(f) };
        publish(shared, &task, n_tasks);

        if caller_works {
            work_on(shared, f, n_tasks);
        }

        // Wait for workers still finishing their last task, retire the job so no late waker
        // joins it, then wait for workers that already hold it to let go.
        wait_until_zero(shared, &shared.remaining);
        shared.live.store(INITIAL_GENERATION, Ordering::SeqCst);
        wait_until_zero(shared, &shared.active);
        if let Some(message) = shared.take_panic() {
            panic!("a thread-pool task panicked: {message}");
        }
    }
}

/// Makes a job of `n_tasks` calls of `task` visible to the workers, and wakes the sleeping
/// ones (only when there are any: the notification is a system call).
fn publish(shared: &Shared, task: &&'static Task, n_tasks: usize) {
    shared.task.store(task as *const &'static Task as *mut &'static Task, Ordering::Relaxed);
    shared.n_tasks.store(n_tasks, Ordering::Relaxed);
    shared.next_task.store(0, Ordering::Relaxed);
    shared.remaining.store(n_tasks, Ordering::Relaxed);
    // `wrapping_add` skips nothing but the never-used INITIAL_GENERATION after 2^64 jobs.
    let mut generation = shared.generation.load(Ordering::Relaxed).wrapping_add(1);
    if generation == INITIAL_GENERATION {
        generation = generation.wrapping_add(1);
    }
    // The stores above happen before these: a worker that sees either sees the job.
    shared.live.store(generation, Ordering::SeqCst);
    shared.generation.store(generation, Ordering::SeqCst);
    if shared.sleepers.load(Ordering::SeqCst) != 0 {
        let mut notifications = shared.lock_sleep();
        *notifications += 1;
        shared.sleepers.store(0, Ordering::SeqCst);
        shared.wake.notify_all();
    }
}

/// Spins briefly, then sleeps on `done`, until `counter` is 0.
fn wait_until_zero(shared: &Shared, counter: &AtomicUsize) {
    let mut spins = 0;
    while counter.load(Ordering::Acquire) != 0 {
        if spins < SPIN_ITERATIONS {
            spin_once(spins);
            spins += 1;
            continue;
        }
        let mut guard = shared.lock_sleep();
        shared.caller_sleeping.store(true, Ordering::SeqCst);
        while counter.load(Ordering::SeqCst) != 0 {
            guard = shared.done.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        shared.caller_sleeping.store(false, Ordering::SeqCst);
    }
}

/// Claims and runs tasks until none are left. Returns after decrementing `remaining`
/// for each task it ran. A task's panic is recorded for `run` to re-raise, not unwound
/// through here, so a worker keeps its loop and the job's bookkeeping stays exact.
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
                self.0.count_down(&self.0.remaining);
            }
        }
        let _done = Done(shared);
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(i))) {
            shared.record_panic(payload);
        }
    }
}

/// Waits (spinning a little, then asleep) for a generation other than `seen`; `None` once
/// the pool shuts down.
fn next_generation(shared: &Shared, seen: usize) -> Option<usize> {
    for spins in 0..SPIN_ITERATIONS {
        let generation = shared.generation.load(Ordering::Acquire);
        if generation != seen {
            return Some(generation);
        }
        spin_once(spins);
    }
    let mut notifications = shared.lock_sleep();
    loop {
        // Register, then check: a job published after the check sees the registration.
        shared.sleepers.fetch_add(1, Ordering::SeqCst);
        let registered_at = *notifications;
        loop {
            let outcome = if shared.shutdown.load(Ordering::SeqCst) {
                Some(None)
            } else {
                let generation = shared.generation.load(Ordering::SeqCst);
                (generation != seen).then_some(Some(generation))
            };
            if let Some(outcome) = outcome {
                if *notifications == registered_at {
                    shared.sleepers.fetch_sub(1, Ordering::SeqCst);
                }
                return outcome;
            }
            notifications = shared.wake.wait(notifications).unwrap_or_else(|e| e.into_inner());
            if *notifications != registered_at {
                break; // The notifier cleared every registration; register again.
            }
        }
    }
}

/// Joins job `generation` if it is still live: counts this worker in `active` first, so
/// `run` waits for it; leaves again if the job was retired meanwhile.
fn join(shared: &Shared, generation: usize) -> Option<(&'static Task, usize)> {
    shared.active.fetch_add(1, Ordering::SeqCst);
    if shared.live.load(Ordering::SeqCst) != generation {
        shared.count_down(&shared.active);
        return None;
    }
    // SAFETY: the job is live and we are counted in `active`, so `run` has not returned and
    // the reference `task` points at is still on its stack.
    let task = unsafe { *shared.task.load(Ordering::Relaxed) };
    Some((task, shared.n_tasks.load(Ordering::Relaxed)))
}

fn worker_loop(shared: &Shared) {
    // Start from the generation the pool was created with, not whatever it is when this thread
    // first runs: a job submitted before the thread started must not be mistaken for an old one.
    let mut seen = INITIAL_GENERATION;
    while let Some(generation) = next_generation(shared, seen) {
        seen = generation;
        let Some((f, n_tasks)) = join(shared, generation) else {
            continue;
        };
        // `work_on` catches the tasks' panics; this catches anything else, because a worker
        // that died here would never leave `active` and `run` would wait forever.
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| work_on(shared, f, n_tasks))) {
            shared.record_panic(payload);
        }
        shared.count_down(&shared.active);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        {
            let _guard = self.shared.lock_sleep();
            self.shared.shutdown.store(true, Ordering::SeqCst);
            self.shared.wake.notify_all();
        }
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
        let pool = ThreadPool::new(3).expect("pool");
        for n in [0usize, 1, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn only_jobs_handed_to_workers_are_counted() {
        let pool = ThreadPool::new(2).expect("pool");
        pool.run(0, &|_| {});
        pool.run(1, &|_| {});
        assert_eq!(pool.dispatched_jobs(), 0, "no task, or one the caller runs alone");
        pool.run(5, &|_| {});
        pool.run(2, &|_| {});
        assert_eq!(pool.dispatched_jobs(), 2);
        let alone = ThreadPool::new(1).expect("pool");
        alone.run(5, &|_| {});
        assert_eq!(alone.dispatched_jobs(), 0, "a one-thread pool dispatches nothing");
    }

    #[test]
    fn many_back_to_back_jobs() {
        let pool = ThreadPool::new(2).expect("pool");
        let total = AtomicUsize::new(0);
        for _ in 0..2000 {
            pool.run(4, &|i| {
                total.fetch_add(i, Ordering::Relaxed);
            });
        }
        assert_eq!(total.load(Ordering::Relaxed), 2000 * 6);
    }

    /// The panic message `run` re-raised, or None if it returned normally.
    fn run_catching(pool: &ThreadPool, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) -> Option<String> {
        let outcome = catch_unwind(AssertUnwindSafe(|| pool.run(n_tasks, f)));
        outcome.err().map(describe_panic)
    }

    #[test]
    fn a_panic_in_a_worker_run_task_propagates_and_the_pool_survives() {
        // Two tasks meeting at a barrier: the caller blocks in the one it claimed, so the
        // other can only run on the worker. Only the worker's task panics.
        let pool = ThreadPool::new(2).expect("pool");
        let caller = std::thread::current().id();
        let both_started = std::sync::Barrier::new(2);
        let panicked = run_catching(&pool, 2, &|_| {
            both_started.wait();
            if std::thread::current().id() != caller {
                panic!("boom on a worker");
            }
        });
        assert_eq!(panicked.as_deref(), Some("a thread-pool task panicked: boom on a worker"));
        let count = AtomicUsize::new(0);
        pool.run(8, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 8);
    }

    /// A hang guard, not a timing assertion: how long a broken hand-shake may take to show.
    const HANG_GUARD: std::time::Duration = std::time::Duration::from_secs(60);

    /// Polls `condition` until it holds; false if it still does not after [`HANG_GUARD`].
    fn eventually(condition: impl Fn() -> bool) -> bool {
        let deadline = std::time::Instant::now() + HANG_GUARD;
        while !condition() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::yield_now();
        }
        true
    }

    /// Runs `f` on its own thread; false if it has not returned after [`HANG_GUARD`] (the
    /// thread is then left behind, stuck).
    fn returns(f: impl FnOnce() + Send + 'static) -> bool {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = sender.send(());
        });
        receiver.recv_timeout(HANG_GUARD).is_ok()
    }

    #[test]
    fn a_job_wakes_a_worker_that_went_to_sleep() {
        let pool = ThreadPool::new(2).expect("pool");
        pool.run(2, &|_| {});
        assert!(eventually(|| pool.shared.sleepers.load(Ordering::SeqCst) == 1), "the idle worker sleeps");
        // Two tasks that each wait for the other to start: they can only meet if the
        // sleeping worker was woken and took one.
        let arrived = AtomicUsize::new(0);
        let met = AtomicUsize::new(0);
        pool.run(2, &|_| {
            arrived.fetch_add(1, Ordering::SeqCst);
            if eventually(|| arrived.load(Ordering::SeqCst) == 2) {
                met.fetch_add(1, Ordering::SeqCst);
            }
        });
        assert_eq!(met.load(Ordering::SeqCst), 2, "both tasks ran at the same time");
    }

    #[test]
    fn a_worker_finishing_last_wakes_the_caller_that_went_to_sleep() {
        let pool = Arc::new(ThreadPool::new(2).expect("pool"));
        let finished = returns({
            let pool = Arc::clone(&pool);
            move || {
                let caller = std::thread::current().id();
                let shared = &pool.shared;
                // The tasks meet, so one runs on the worker; the worker's ends only once the
                // caller, done with its own, sleeps waiting for it: only the worker's
                // notification can wake it.
                let arrived = AtomicUsize::new(0);
                pool.run(2, &|_| {
                    arrived.fetch_add(1, Ordering::SeqCst);
                    eventually(|| arrived.load(Ordering::SeqCst) == 2);
                    if std::thread::current().id() != caller {
                        eventually(|| shared.caller_sleeping.load(Ordering::SeqCst));
                    }
                });
            }
        });
        assert!(finished, "the caller was never woken");
    }

    #[test]
    fn a_panic_in_a_caller_run_task_propagates() {
        let pool = ThreadPool::new(1).expect("pool");
        assert_eq!(run_catching(&pool, 3, &|i| assert!(i != 2, "task 2")).as_deref(), Some("task 2"));
        let pool = ThreadPool::new(2).expect("pool");
        let message = run_catching(&pool, 8, &|_| panic!("every task"));
        assert_eq!(message.as_deref(), Some("a thread-pool task panicked: every task"));
    }

    #[test]
    fn the_fault_hook_panics_one_worker_task_of_the_next_job_only() {
        let pool = ThreadPool::new(3).expect("pool");
        let caller = std::thread::current().id();
        let ran_on_workers = AtomicUsize::new(0);
        let ran = AtomicUsize::new(0);
        let count = |_: usize| {
            ran.fetch_add(1, Ordering::Relaxed);
            if std::thread::current().id() != caller {
                ran_on_workers.fetch_add(1, Ordering::Relaxed);
            }
        };
        pool.panic_in_next_job_for_testing();
        let panicked = run_catching(&pool, 8, &count);
        assert_eq!(panicked.as_deref(), Some("a thread-pool task panicked: injected thread-pool fault (test hook)"));
        // Task 0 panicked; the other seven ran, all on workers.
        assert_eq!((ran.load(Ordering::Relaxed), ran_on_workers.load(Ordering::Relaxed)), (7, 7));
        assert_eq!(run_catching(&pool, 8, &count), None, "the hook fires once");
        assert_eq!(ran.load(Ordering::Relaxed), 15);
    }

    #[test]
    fn the_fault_hook_also_fires_for_single_task_and_single_thread_jobs() {
        for threads in [1, 2] {
            let pool = ThreadPool::new(threads).expect("pool");
            pool.panic_in_next_job_for_testing();
            assert!(run_catching(&pool, 1, &|_| {}).is_some(), "{threads} threads");
            assert_eq!(run_catching(&pool, 1, &|_| {}), None);
        }
    }

    #[test]
    fn too_many_threads_is_an_error_not_a_crash() {
        let error = ThreadPool::new(usize::MAX).expect_err("usize::MAX threads");
        assert!(matches!(error, PoolError::TooManyThreads { requested: usize::MAX }), "{error}");
        assert!(ThreadPool::new(MAX_THREADS + 1).is_err());
    }

    #[test]
    fn a_failed_spawn_joins_the_workers_already_started() {
        // Every started worker holds a clone of `alive` until its thread ends, so after the
        // failed `new` returns, only the test's own reference may be left.
        let alive = Arc::new(());
        let result = ThreadPool::with_spawner(5, |name, body| {
            if name.ends_with("-3") {
                return Err(std::io::Error::other("no more threads"));
            }
            let alive = Arc::clone(&alive);
            std::thread::Builder::new().name(name).spawn(move || {
                body();
                drop(alive);
            })
        });
        let error = result.expect_err("spawning worker 3 fails");
        assert!(matches!(error, PoolError::Spawn { index: 3, requested: 5, .. }), "{error}");
        assert_eq!(Arc::strong_count(&alive), 1, "workers 1 and 2 were stopped and joined");
    }
}
