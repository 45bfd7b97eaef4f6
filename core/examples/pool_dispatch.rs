//! The thread pool's own cost: how long one `run` (dispatch, tasks, barrier) takes with
//! trivial tasks, and how a job of small equal tasks is shared between the caller and the
//! workers (a decode step is ~200 such jobs per token on matrices of 0.1-0.6 MB).
//!
//! `cargo run --release -p cortexstream --example pool_dispatch -- [threads] [jobs] [work]`
//! (default 2 threads, 200000 jobs, `work` = 200 units of arithmetic per task). Prints, per
//! job shape, the wall and process CPU time per job and the share of tasks the workers ran.
//! Compare builds by alternating runs; on a shared machine read the CPU time as well as the
//! wall time (a spinning worker costs CPU even when the wall time looks good).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cortexstream::threadpool::ThreadPool;

/// CPU time used so far by every thread of this process.
fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Arithmetic the optimiser cannot remove, `units` steps of a xorshift.
fn busy(units: usize, seed: usize) -> usize {
    let mut x = seed | 1;
    for _ in 0..units {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: usize| args.get(i).map_or(default, |s| s.parse().expect("a number"));
    let (threads, jobs, work) = (arg(0, 2), arg(1, 200_000), arg(2, 200));
    let pool = ThreadPool::new(threads).expect("pool");
    println!("{threads} threads, {jobs} jobs, {work} units of work per task");
    println!("{:>6} {:>6} {:>12} {:>12} {:>14}", "tasks", "work", "wall/job", "cpu/job", "worker share");
    for (n_tasks, units) in [(2, 0), (8, 0), (2, work), (8, work), (8, work * 10)] {
        let caller = std::thread::current().id();
        let on_workers = AtomicUsize::new(0);
        let sink = AtomicUsize::new(0);
        let task = |i: usize| {
            sink.fetch_add(busy(units, i), Ordering::Relaxed);
            if std::thread::current().id() != caller {
                on_workers.fetch_add(1, Ordering::Relaxed);
            }
        };
        let jobs = if units > work { jobs / 10 } else { jobs };
        let (wall, cpu) = (Instant::now(), process_cpu_time());
        for _ in 0..jobs {
            pool.run(n_tasks, &task);
        }
        let (wall, cpu) = (wall.elapsed(), process_cpu_time() - cpu);
        let per_job = |d: Duration| format!("{:.2} us", d.as_secs_f64() * 1e6 / jobs as f64);
        let share = on_workers.load(Ordering::Relaxed) as f64 / (jobs * n_tasks) as f64;
        println!("{n_tasks:>6} {units:>6} {:>12} {:>12} {:>13.1}%", per_job(wall), per_job(cpu), share * 100.0);
    }
}
