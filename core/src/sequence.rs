//! One request's life inside the engine: its tokens, KV blocks, sampler, text stream,
//! timestamps, and where its events go.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;

use crate::detokenize::StreamingText;
use crate::kv_cache::BlockHash;
use crate::request::{Event, FinishReason, Timings, Usage};
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
    pub blocks: Vec<u32>,
    /// Leading blocks registered in the prefix cache, and the hash of the last one.
    pub registered_blocks: usize,
    pub last_block_hash: Option<BlockHash>,
    pub max_new_tokens: usize,
    pub sampler: Sampler,
    pub text: StreamingText,
    /// Token ids that end the request (end-of-generation ids unless ignore_eos, plus stop_token_ids).
    pub stop_ids: HashSet<u32>,
    pub sink: EventSink,
    pub cancel: Arc<AtomicBool>,
    pub cached_prompt_tokens: usize,
    pub submitted: Instant,
    pub first_scheduled: Option<Instant>,
    pub first_token: Option<Instant>,
    pub last_token: Option<Instant>,
    /// Steps in a row this sequence's decode sat out for prompt work (see the scheduler).
    pub decode_deferrals: u32,
    /// Already in the plan being built (the scheduler's bookkeeping within one step).
    pub scheduled_this_step: bool,
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

    /// Sends the final event. Consumes nothing: the caller frees the blocks.
    pub fn send_finished(&mut self, reason: FinishReason, error: Option<String>) {
        let event = Event::Finished { reason, usage: self.usage(), timings: self.timings(Instant::now()), error };
        let _ = self.sink.deliver(event);
    }
}
