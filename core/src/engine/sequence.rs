//! One request's life inside the engine: its tokens, KV blocks, sampler, text stream,
//! timestamps, and where its events go.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;

use super::block_allocator::{BlockHash, BlockTable};
use crate::constraint::state::ConstraintState;
use crate::detokenize::StreamingText;
use crate::request::{Event, StopReason, Timings, Usage};
use crate::sampling::Sampler;

/// A user callback receiving every event on the engine thread; returning `false` cancels.
pub type EventCallback = Box<dyn FnMut(&Event) -> bool + Send + 'static>;

/// Where a sequence's events go.
pub(crate) enum EventSink {
    /// Every event into the handle's channel.
    Channel(Sender<Event>),
    /// Every event to the callback; the `Finished` event also into the handle's channel so
    /// the handle can be waited on.
    Callback(EventCallback, Sender<Event>),
}

/// Why delivering an event failed: the consumer is gone or asked to stop.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    Delivered,
    /// The receiving handle was dropped or the callback returned `false`.
    ConsumerGone,
    /// The callback panicked; the message says how.
    CallbackPanicked(String),
}

impl EventSink {
    pub(crate) fn deliver(&mut self, event: Event) -> Delivery {
        match self {
            EventSink::Channel(tx) => match tx.send(event) {
                Ok(()) => Delivery::Delivered,
                Err(_) => Delivery::ConsumerGone,
            },
            EventSink::Callback(callback, tx) => {
                let finished = matches!(event, Event::Finished { .. });
                // A panicking user callback must not take the engine thread down with it.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback(&event)));
                if finished {
                    let _ = tx.send(event);
                }
                match outcome {
                    Ok(true) => Delivery::Delivered,
                    Ok(false) => Delivery::ConsumerGone,
                    Err(panic) => Delivery::CallbackPanicked(panic_message(&panic)),
                }
            }
        }
    }
}

/// The text of a caught panic payload.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// A request being served.
pub(crate) struct Sequence {
    pub id: u64,
    pub priority: i32,
    /// Submission order; ties in priority go to the earliest.
    pub arrival: u64,
    /// Prompt tokens followed by generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Leading tokens whose K/V are in the cache.
    pub computed: usize,
    /// Leading positions whose K/V this sequence has had at least once (computed, or served
    /// from the prefix cache): the most `computed` ever was. After a preemption, positions
    /// below it that run through the model again are recomputation, not prefill.
    pub covered: usize,
    /// The KV blocks it holds; they go back to the allocator when the sequence is dropped.
    pub blocks: BlockTable,
    /// Its blocks in the sliding-window layers' pool (empty for models without one); those
    /// before the window of its next position are already given back.
    pub sliding_blocks: BlockTable,
    /// Its place in the engine's bounded queue, held from submit until it first joins the
    /// running batch (then, or when it ends, the place is given back).
    pub queue_slot: Option<QueueSlot>,
    /// Leading blocks registered in the prefix cache, and the hash of the last one.
    pub registered_blocks: usize,
    pub last_block_hash: Option<BlockHash>,
    pub max_new_tokens: usize,
    pub sampler: Sampler,
    /// The grammar its output must follow, if the request is constrained.
    pub constraint: Option<ConstraintState>,
    pub text: StreamingText,
    /// Token ids that end the request, each with the stop it reports: the request's
    /// stop_token_ids, and the model's end-of-generation ids unless ignore_eos.
    pub stop_ids: HashMap<u32, StopReason>,
    pub sink: EventSink,
    pub cancel: Arc<AtomicBool>,
    pub cached_prompt_tokens: usize,
    pub submitted: Instant,
    pub first_scheduled: Option<Instant>,
    pub first_token: Option<Instant>,
    pub last_token: Option<Instant>,
    /// Already in the plan being built (the scheduler's bookkeeping within one step).
    pub scheduled_this_step: bool,
    /// The request's log span (disabled, and free, when nobody listens; see `telemetry`).
    pub span: tracing::Span,
}

impl Sequence {
    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Acquire)
    }

    /// Generating: only the last sampled token is left to run (not a prompt or a recompute).
    pub fn is_decoding(&self) -> bool {
        self.pending() == 1 && self.computed >= self.prompt_len
    }

    /// Tokens still to run through the model before the next token can be sampled.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.computed
    }

    /// Records that admission gave it positions `..computed` from the prefix cache. Returns
    /// the prompt tokens this covers for the first time (its prefix-cache hits, also added to
    /// its usage); positions it had before a preemption are not hits again.
    pub fn note_cache_reuse(&mut self) -> usize {
        let hits = self.computed.min(self.prompt_len).saturating_sub(self.covered);
        self.covered = self.covered.max(self.computed);
        self.cached_prompt_tokens += hits;
        hits
    }

    /// Records that positions `start .. start + len` ran through the model, and says which of
    /// them were prompt tokens computed for the first time and which were computed again.
    pub fn note_computed(&mut self, start: usize, len: usize) -> ComputedTokens {
        let end = start + len;
        let first_time = start.max(self.covered);
        let work = ComputedTokens {
            prompt: end.min(self.prompt_len).saturating_sub(first_time),
            recomputed: end.min(self.covered).saturating_sub(start),
        };
        self.covered = self.covered.max(end);
        work
    }

    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated(),
            cached_prompt_tokens: self.cached_prompt_tokens,
        }
    }

    pub fn timings(&self, now: Instant) -> Timings {
        let ns = |from: Instant, to: Instant| to.saturating_duration_since(from).as_nanos() as u64;
        let first_token = self.first_token;
        let decode_ns = first_token.map_or(0, |t| ns(t, self.last_token.unwrap_or(t)));
        let after_first = self.generated().saturating_sub(1) as u64;
        Timings {
            queued_ns: self.first_scheduled.map_or(ns(self.submitted, now), |t| ns(self.submitted, t)),
            time_to_first_token_ns: first_token.map_or(0, |t| ns(self.submitted, t)),
            prefill_ns: match (self.first_scheduled, first_token) {
                (Some(s), Some(t)) => ns(s, t),
                _ => 0,
            },
            decode_ns,
            per_token_ns: decode_ns.checked_div(after_first).unwrap_or(0),
            total_ns: ns(self.submitted, now),
        }
    }

    /// Ends the sequence: its blocks and queue place are given back now, and the returned
    /// final event is delivered by the caller once the engine's gauges say so.
    pub fn finish(self, stop: StopReason, error: Option<String>) -> FinalEvent {
        let event = Event::Finished {
            reason: stop.finish_reason(),
            stop_reason: stop,
            usage: self.usage(),
            timings: self.timings(Instant::now()),
            error,
        };
        // Everything but the sink (blocks included) is dropped here.
        FinalEvent { sink: self.sink, event }
    }
}

/// What a forward step computed, as the engine's token counters count it. Each prompt
/// position of a sequence is covered once, either by a prefix-cache hit or as `prompt`, so
/// hits + `prompt` add up to the prompt tokens of every request whose prompt was consumed.
/// (Positions first computed past the prompt are decodes, counted as generated tokens.)
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ComputedTokens {
    /// Prompt positions computed for the first time.
    pub prompt: usize,
    /// Positions computed again after a preemption took their K/V away.
    pub recomputed: usize,
}

impl std::ops::AddAssign for ComputedTokens {
    fn add_assign(&mut self, other: Self) {
        self.prompt += other.prompt;
        self.recomputed += other.recomputed;
    }
}

/// The `Finished` event of a sequence that no longer holds anything, and where it goes.
pub(crate) struct FinalEvent {
    sink: EventSink,
    event: Event,
}

impl FinalEvent {
    pub fn deliver(mut self) {
        let _ = self.sink.deliver(self.event);
    }
}

/// One place in a bounded queue (the engine's `max_queue`). Places are only taken by
/// [`QueueSlot::try_take`], with a compare-and-swap against the limit, and only given back by
/// dropping the slot, so the count is exact however many threads submit at once.
#[derive(Debug)]
pub(crate) struct QueueSlot(Arc<AtomicUsize>);

impl QueueSlot {
    /// Takes a place if fewer than `limit` are taken; `None` when the queue is full.
    pub fn try_take(taken: &Arc<AtomicUsize>, limit: usize) -> Option<Self> {
        taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .ok()
            .map(|_| Self(Arc::clone(taken)))
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_takers_get_exactly_the_limit_and_drops_give_places_back() {
        let taken = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(std::sync::Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (taken, start) = (Arc::clone(&taken), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    (0..50).filter_map(|_| QueueSlot::try_take(&taken, 37)).collect::<Vec<_>>()
                })
            })
            .collect();
        let slots: Vec<QueueSlot> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        assert_eq!(slots.len(), 37);
        assert_eq!(taken.load(Ordering::Acquire), 37);
        drop(slots);
        assert_eq!(taken.load(Ordering::Acquire), 0);
        assert!(QueueSlot::try_take(&taken, 1).is_some());
    }
}
