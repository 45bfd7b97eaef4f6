//! Token masks computed beside the forward, on one long-lived thread.
//!
//! A sequence's next-token mask depends only on the tokens it already sampled, so the masks
//! of a step can be computed while the model runs the step's forward. Spawning a thread every
//! step cost a thread creation per decoded token; the [`MaskWorker`] instead keeps one thread
//! that sleeps on a channel between steps. It is started on the first step that has a
//! constrained sequence: an engine that never sees a constraint never starts it.
//!
//! The grammar states travel to the worker and back by value. Nothing is lost on the way: a
//! panic while masking is caught per state and recorded as that state's failure (its request
//! then ends with an error, never unconstrained), and if the worker cannot be started or is
//! gone, the masks are computed on the engine thread when sampling needs them.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use super::state::ConstraintState;

/// The grammar states of the sequences sampling this step, each with its index in the
/// running batch.
pub(crate) type StepStates = Vec<(usize, ConstraintState)>;

/// How the masks sampling used were obtained, counted over the engine's life.
#[derive(Debug, Default)]
pub(crate) struct MaskCounters {
    /// Masks ready when sampling started (computed beside the forward).
    prepared: AtomicU64,
    /// Masks sampling had to compute itself, after the forward.
    late: AtomicU64,
}

/// A copy of the [`MaskCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaskCounts {
    /// Masks computed beside the forward, ready before sampling.
    pub prepared: u64,
    /// Masks computed after the forward, delaying sampling.
    pub late: u64,
}

impl MaskCounters {
    pub fn counts(&self) -> MaskCounts {
        MaskCounts { prepared: self.prepared.load(Ordering::Relaxed), late: self.late.load(Ordering::Relaxed) }
    }

    /// Counts the states of a step once the forward is done, before sampling.
    fn record(&self, states: &[(usize, ConstraintState)]) {
        let prepared = states.iter().filter(|(_, state)| state.is_mask_prepared()).count() as u64;
        self.prepared.fetch_add(prepared, Ordering::Relaxed);
        self.late.fetch_add(states.len() as u64 - prepared, Ordering::Relaxed);
    }
}

/// The engine thread's side of the mask thread.
pub(crate) struct MaskWorker {
    counters: Arc<MaskCounters>,
    /// `None` until the first constrained step; then the running thread, or `Err` if it
    /// could not be started (masks are then computed late, on the engine thread).
    thread: Option<Result<Connection, ()>>,
}

struct Connection {
    /// Dropped first on shutdown: the closed channel ends the worker's loop.
    jobs: Option<Sender<StepStates>>,
    done: Receiver<StepStates>,
    handle: Option<JoinHandle<()>>,
}

impl MaskWorker {
    pub fn new(counters: Arc<MaskCounters>) -> Self {
        Self { counters, thread: None }
    }

    /// Runs `forward` on this thread while the worker computes the masks of `states`, and
    /// returns once both are done, with `states` back in place and counted.
    pub fn beside<R>(&mut self, states: &mut StepStates, forward: impl FnOnce() -> R) -> R {
        if states.is_empty() {
            return forward();
        }
        let outcome = match self.connection() {
            Some(connection) => connection.run(states, forward),
            None => forward(),
        };
        self.counters.record(states);
        outcome
    }

    fn connection(&mut self) -> Option<&mut Connection> {
        self.thread.get_or_insert_with(|| Connection::start().map_err(drop)).as_mut().ok()
    }
}

impl Connection {
    fn start() -> std::io::Result<Self> {
        let (jobs, job_rx) = crossbeam_channel::bounded::<StepStates>(1);
        let (done_tx, done) = crossbeam_channel::bounded::<StepStates>(1);
        let handle = std::thread::Builder::new().name("cortexstream-masks".into()).spawn(move || {
            for mut states in job_rx {
                states.iter_mut().for_each(|(_, state)| prepare_catching_panics(state));
                if done_tx.send(states).is_err() {
                    return;
                }
            }
        })?;
        Ok(Self { jobs: Some(jobs), done, handle: Some(handle) })
    }

    fn run<R>(&mut self, states: &mut StepStates, forward: impl FnOnce() -> R) -> R {
        let Some(jobs) = &self.jobs else { return forward() };
        if let Err(unsent) = jobs.send(std::mem::take(states)) {
            // The worker is gone (it only stops when the engine drops it): sampling computes
            // the masks itself.
            *states = unsent.into_inner();
            return forward();
        }
        // Even a panicking forward waits for the worker's answer: left in the channel, it
        // would be taken for the next step's states.
        let outcome = catch_unwind(AssertUnwindSafe(forward));
        match self.done.recv() {
            Ok(prepared) => *states = prepared,
            Err(_) => unreachable_lost_states(),
        }
        outcome.unwrap_or_else(|panic| resume_unwind(panic))
    }
}

/// The mask thread never drops states it was given (every panic is caught per state), so
/// the reply channel cannot close while a job is out. If it ever did, continuing would
/// sample those sequences without their constraint: stopping is the only safe answer.
fn unreachable_lost_states() -> ! {
    panic!("the constraint mask thread stopped while holding grammar states")
}

/// Prepares one state's mask; a panic becomes that state's failure, so its request ends
/// with an error instead of being sampled without a mask.
fn prepare_catching_panics(state: &mut ConstraintState) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| state.prepare_mask())) {
        state.fail_mask(crate::engine::sequence::panic_message(&payload));
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
