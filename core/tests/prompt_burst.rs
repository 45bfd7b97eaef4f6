//! Issues 16/21, the 32-stream ramp-up through the core's front door: prompts that arrive
//! together are prefilled in as few steps as `max_batch_tokens` allows, even when the first of
//! them is decoding by the time the rest reach the engine (counted in engine steps, never in
//! time).

mod common;

use common::greedy;

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cortexstream::{Engine, EngineConfig, Event, FinishReason, Request};

/// What `Engine::submit_with_callback` takes.
type EventCallback = Box<dyn FnMut(&Event) -> bool + Send>;

/// Hang guard only: how long the held engine thread waits for the test to submit the burst.
const HOLD_LIMIT: Duration = Duration::from_secs(120);

/// Default scheduling (25 ms target, 2048 tokens a step), one compute thread. Static, so the
/// callbacks (on the engine thread) can read its step counter without owning it.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let config = EngineConfig { threads: Some(1), ..EngineConfig::new(common::smollm2_path()) };
        Engine::new(config).expect("the default model loads")
    })
}

/// The engine's step counter at each stream's first token, by stream index.
type FirstTokenSteps = Arc<Mutex<Vec<Option<u64>>>>;

/// A callback that notes the engine's step counter (the step in flight is counted before its
/// tokens are sampled) at stream `index`'s first token.
fn note_first_token(seen: &FirstTokenSteps, index: usize) -> EventCallback {
    let seen = Arc::clone(seen);
    Box::new(move |event: &Event| {
        if matches!(event, Event::Token { .. }) {
            seen.lock().unwrap()[index].get_or_insert_with(|| engine().metrics().steps);
        }
        true
    })
}

/// Holds the engine thread at each of a stream's tokens until the test says go on: the test
/// then submits while the engine is mid-step, at a point it chose.
struct Holder {
    at_token: mpsc::Receiver<()>,
    go_on: mpsc::Sender<()>,
}

impl Holder {
    fn submit(engine: &Engine, max_tokens: usize) -> (Holder, cortexstream::RequestHandle) {
        let (token_tx, at_token) = mpsc::channel();
        let (go_on, go_on_rx) = mpsc::channel::<()>();
        let callback: EventCallback = Box::new(move |event: &Event| {
            if matches!(event, Event::Token { .. }) {
                let _ = token_tx.send(());
                let _ = go_on_rx.recv_timeout(HOLD_LIMIT);
            }
            true
        });
        let request = Request::new("Write a story about a night train (#h).", greedy(max_tokens));
        let handle = engine.submit_with_callback(request, callback).expect("submit");
        (Holder { at_token, go_on }, handle)
    }

    /// Waits until the engine thread is held at the holder's next token.
    fn wait_held(&self) {
        self.at_token.recv_timeout(HOLD_LIMIT).expect("the holder samples a token");
    }

    fn release(&self) {
        self.go_on.send(()).expect("the engine thread waits");
    }
}

#[test]
fn prompts_submitted_before_the_first_streams_of_their_burst_decode_all_start_in_one_step() {
    let engine = engine();
    let seen: FirstTokenSteps = Arc::new(Mutex::new(vec![None; 32]));
    // Step 1: a holder stream (2 tokens) alone. Step 2: its last decode and the burst's first
    // prompt; the engine is held at the holder's token, sampled before that prompt's, while
    // the other 31 prompts are submitted: they arrive while the first one's step runs, before
    // its first token, as the last of 32 clients do.
    let (holder, holder_done) = Holder::submit(engine, 2);
    holder.wait_held();
    let request = |i: usize| Request::new(format!("Write a story about a lighthouse keeper (#{i})."), greedy(4));
    let first = engine.submit_with_callback(request(0), note_first_token(&seen, 0)).expect("submit");
    holder.release();
    holder.wait_held();
    let rest: Vec<_> =
        (1..32).map(|i| engine.submit_with_callback(request(i), note_first_token(&seen, i)).expect("submit")).collect();
    holder.release();
    assert_eq!(holder_done.wait().finish_reason, FinishReason::Length);
    for done in std::iter::once(first).chain(rest).map(|h| h.wait()) {
        assert_eq!(done.finish_reason, FinishReason::Length);
    }

    let seen: Vec<u64> = seen.lock().unwrap().iter().map(|s| s.expect("every stream sampled")).collect();
    // Step 3: the first stream's decode and all 31 prompts (about 15 tokens each) beside it,
    // not the few dozen tokens the budget grants beside a decode it protects.
    assert_eq!(seen[0], 2, "{seen:?}");
    assert!(seen[1..].iter().all(|&step| step == 3), "first tokens at steps {seen:?}");
}
