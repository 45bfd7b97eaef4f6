//! Issue 21 item 1 through the core's front door: a step serves every running decode and a
//! chunk of a long prompt, so a running stream gets a token on every step while a 2k-token
//! prompt prefills beside it (counted in engine steps, never in time).
//!
//! Run with `--test-threads=1`: the test reads the engine's step counter.

mod common;

use common::greedy;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use cortexstream::{Engine, EngineConfig, Event, FinishReason, Prompt, Request};

/// The default scheduling (adaptive budget), one compute thread (the machine is shared).
fn shared_engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let config = EngineConfig { threads: Some(1), ..EngineConfig::new(common::smollm2_path()) };
        Engine::new(config).expect("the default model loads")
    })
}

/// `n` tokens of real text (a paragraph repeated).
fn long_prompt(engine: &Engine, n: usize) -> Vec<u32> {
    let paragraph = "The river ran past the old mill, where the miller's daughter counted sacks of \
                     grain each morning and wrote the numbers in a ledger her grandfather had bound. ";
    let ids = engine.tokenize(paragraph, false).unwrap();
    ids.iter().copied().cycle().take(n).collect()
}

/// What the running stream saw at each of its tokens.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The engine's step counter (counted before a step's tokens are sampled).
    step: u64,
    /// Whether the long prompt had been submitted and had no token yet.
    long_prefilling: bool,
}

#[test]
fn a_running_stream_gets_a_token_on_every_step_while_a_2k_prompt_prefills() {
    let engine = shared_engine();
    let long_submitted = Arc::new(AtomicBool::new(false));
    let long_sampled = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let (first_token_tx, first_token_rx) = mpsc::channel();
    let stream = {
        let (submitted, sampled, seen) = (Arc::clone(&long_submitted), Arc::clone(&long_sampled), Arc::clone(&seen));
        let callback = Box::new(move |event: &Event| {
            if !matches!(event, Event::Token { .. }) {
                return true;
            }
            let step = shared_engine().metrics().steps;
            let prefilling = submitted.load(Ordering::Acquire) && !sampled.load(Ordering::Acquire);
            let mut seen = seen.lock().unwrap();
            seen.push(Seen { step, long_prefilling: prefilling });
            if seen.len() == 1 {
                let _ = first_token_tx.send(());
            }
            // Once the long prompt has its token, this stream has shown what it had to.
            !sampled.load(Ordering::Acquire)
        });
        engine.submit_with_callback(Request::new("Once upon a time", greedy(4000)), callback).unwrap()
    };
    first_token_rx.recv().expect("the stream decodes");

    let prompt = long_prompt(engine, 2048);
    long_submitted.store(true, Ordering::Release);
    let long = {
        let sampled = Arc::clone(&long_sampled);
        let callback = Box::new(move |event: &Event| {
            if matches!(event, Event::Token { .. }) {
                sampled.store(true, Ordering::Release);
            }
            true
        });
        engine.submit_with_callback(Request::new(Prompt::Tokens(prompt), greedy(1)), callback).unwrap()
    };
    let long = long.wait();
    assert_eq!((long.finish_reason, long.usage.prompt_tokens), (FinishReason::Length, 2048));
    let stream = stream.wait();
    assert_eq!(stream.finish_reason, FinishReason::Cancelled, "it ran until the long prompt was done");

    let seen = seen.lock().unwrap().clone();
    let during_prefill = seen.iter().filter(|s| s.long_prefilling).count();
    // The budget starts at 64 tokens and at most doubles a step: 2048 tokens take at least 5
    // chunks (64 + 128 + 256 + 512 + 1024 < 2048), each in a step the stream decodes in.
    assert!(during_prefill >= 5, "{during_prefill} tokens of the stream while the prompt prefilled: {seen:?}");
    for pair in seen.windows(2) {
        assert_eq!(pair[1].step, pair[0].step + 1, "a step without the stream's decode: {seen:?}");
    }
    let metrics = engine.metrics();
    assert_eq!(metrics.kv_blocks_free, metrics.kv_blocks_total, "every block is free again");
}

#[test]
fn a_prompt_alone_is_prefilled_in_chunks_of_max_batch_tokens_whatever_the_target() {
    // No stream waits on a step without decodes, so the latency target (default 50 ms, and
    // 1 ms here, which alone would leave a token or two a step) does not cut such a prompt
    // finer than `max_batch_tokens`: 640 tokens in 256 + 256 + 128, the last step sampling.
    let config = EngineConfig {
        threads: Some(1),
        max_batch_tokens: 256,
        target_step_ms: Some(1.0),
        ..EngineConfig::new(common::smollm2_path())
    };
    let engine = Engine::new(config).expect("the model loads");
    let text: String = (0..800).map(|i| format!("{} ", i * 7919 % 10007)).collect();
    let prompt: Vec<u32> = engine.tokenize(&text, false).unwrap().into_iter().take(640).collect();
    assert_eq!(prompt.len(), 640);
    let done = engine.submit(Request::new(Prompt::Tokens(prompt), greedy(1))).unwrap().wait();
    assert_eq!((done.finish_reason, done.usage.prompt_tokens), (FinishReason::Length, 640));
    let metrics = engine.metrics();
    assert_eq!(metrics.steps, 3, "640 prompt tokens alone in steps of 256");
    assert_eq!(metrics.step_token_budget, 256, "the last step was granted the whole budget");
}
