//! CPU-time clocks for the measurement examples (Linux `clock_gettime`): on a shared machine
//! the CPU time a measurement used says more than its wall time. Included by each example with
//! `#[path = "support/cpu_clock.rs"] mod cpu_clock;` (a folder without `main.rs` is not an
//! example of its own).

#![allow(dead_code)] // each example uses one of the clocks

/// Nanoseconds of CPU time `clock` has counted (0 if the clock cannot be read).
fn cpu_ns(clock: libc::clockid_t) -> u64 {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `time` is a valid timespec for the C library to fill.
    if unsafe { libc::clock_gettime(clock, &mut time) } != 0 {
        return 0;
    }
    time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64
}

/// CPU time of this process, every thread.
pub fn process_cpu_seconds() -> f64 {
    cpu_ns(libc::CLOCK_PROCESS_CPUTIME_ID) as f64 * 1e-9
}

/// Nanoseconds this thread has run on a CPU.
pub fn thread_cpu_ns() -> u64 {
    cpu_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}
