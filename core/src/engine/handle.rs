//! The caller's end of one request: [`RequestHandle`] and its [`Canceller`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError};

use super::completion::{Completion, CompletionBuilder};
use crate::request::{Event, FinishReason, StopReason, Timings, Usage};

/// Why a receive returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// `recv_timeout` waited the full time.
    Timeout,
    /// `try_recv` found nothing yet.
    Empty,
    /// The `Finished` event was already delivered.
    Finished,
}

/// Cancels a request from any thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Canceller(Arc<AtomicBool>);

impl Canceller {
    /// Idempotent; the request ends with [`FinishReason::Cancelled`] within one step.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The caller's end of one request: a stream of [`Event`]s ending with `Finished`.
///
/// Dropping it before the `Finished` event cancels the request.
#[derive(Debug)]
pub struct RequestHandle {
    id: u64,
    prompt_tokens: usize,
    events: Receiver<Event>,
    cancel: Arc<AtomicBool>,
    finished: AtomicBool,
}

impl RequestHandle {
    /// The handle of a request just admitted: nothing received, not cancelled.
    pub(super) fn new(id: u64, prompt_tokens: usize, events: Receiver<Event>, cancel: Arc<AtomicBool>) -> Self {
        Self { id, prompt_tokens, events, cancel, finished: AtomicBool::new(false) }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// Blocks for the next event; `None` once `Finished` has been delivered.
    pub fn recv(&self) -> Option<Event> {
        if self.finished.load(Ordering::Acquire) {
            return None;
        }
        Some(self.observe(self.events.recv().ok()))
    }

    /// Waits at most `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, RecvError> {
        if self.finished.load(Ordering::Acquire) {
            return Err(RecvError::Finished);
        }
        match self.events.recv_timeout(timeout) {
            Ok(event) => Ok(self.observe(Some(event))),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(RecvError::Timeout),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Ok(self.observe(None)),
        }
    }

    /// Returns an event if one is ready.
    pub fn try_recv(&self) -> Result<Event, RecvError> {
        if self.finished.load(Ordering::Acquire) {
            return Err(RecvError::Finished);
        }
        match self.events.try_recv() {
            Ok(event) => Ok(self.observe(Some(event))),
            Err(TryRecvError::Empty) => Err(RecvError::Empty),
            Err(TryRecvError::Disconnected) => Ok(self.observe(None)),
        }
    }

    /// Cancels the request (idempotent, thread-safe).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
    }

    /// A cancel handle that can move to another thread.
    pub fn canceller(&self) -> Canceller {
        Canceller(Arc::clone(&self.cancel))
    }

    /// Drains the remaining events into a [`Completion`].
    pub fn wait(self) -> Completion {
        let mut builder = CompletionBuilder::default();
        while let Some(event) = self.recv() {
            if let Some(completion) = builder.push(event) {
                return completion;
            }
        }
        unreachable!("recv yields a Finished event before it yields None")
    }

    /// Tracks the end of the stream. A channel closed without `Finished` means the engine
    /// went away (shut down mid-request): report that as a cancellation.
    fn observe(&self, event: Option<Event>) -> Event {
        let event = event.unwrap_or(Event::Finished {
            reason: FinishReason::Cancelled,
            stop_reason: StopReason::Cancelled,
            usage: Usage { prompt_tokens: self.prompt_tokens, ..Usage::default() },
            timings: Timings::default(),
            error: Some("the engine shut down".into()),
        });
        if matches!(event, Event::Finished { .. }) {
            self.finished.store(true, Ordering::Release);
        }
        event
    }
}

impl Iterator for RequestHandle {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        self.recv()
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        if !self.finished.load(Ordering::Acquire) {
            self.cancel();
        }
    }
}
