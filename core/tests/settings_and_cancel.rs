//! Issue 17 through the core's front door:
//!
//! - item 8: every engine setting out of range fails `Engine::new` with an error naming it
//!   (never an overflow, a huge allocation or a panic while spawning threads);
//! - item 9 (logprob bytes): a token that is part of a UTF-8 character reports its own raw
//!   bytes, not the replacement character;
//! - "cancel within one step", measured in engine steps (the metrics' step counter), during
//!   decode and during a long prefill, with every KV block free afterwards.
//!
//! Run with `--test-threads=1`: the tests read the shared engine's metrics.

mod common;

use common::greedy;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cortexstream::{
    Engine, EngineConfig, Error, Event, FinishReason, Prompt, Request, RequestHandle, SamplingParams, WaitLimit,
};

/// A small KV cache (keeps the test light) that still fits the long prompt below.
const KV_CACHE_TOKENS: usize = 4096;
/// `max_batch_tokens` of the shared engine: a lone prompt's chunk.
const LONE_PROMPT_CHUNK: usize = 256;

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = EngineConfig::new(common::smollm2_path());
        config.kv_cache_tokens = KV_CACHE_TOKENS;
        // A prompt alone is prefilled `max_batch_tokens` a step: the long prefill below then
        // takes 12 steps, so a cancel can land in the middle of it.
        config.max_batch_tokens = LONE_PROMPT_CHUNK;
        Engine::new(config).expect("the default model loads")
    })
}

/// `Engine::new` with one setting changed must fail naming `param`.
fn assert_rejected(param: &str, change: impl FnOnce(&mut EngineConfig)) -> String {
    let mut config = EngineConfig::new(common::smollm2_path());
    config.kv_cache_tokens = KV_CACHE_TOKENS;
    change(&mut config);
    match Engine::new(config) {
        Err(error @ Error::InvalidRequest { .. }) => {
            assert_eq!(error.param(), Some(param), "{error}");
            error.to_string()
        }
        Err(other) => panic!("expected an invalid `{param}`, got {other:?}"),
        Ok(_) => panic!("an engine with a bad `{param}` was built"),
    }
}

#[test]
fn a_kv_cache_that_overflows_or_exceeds_memory_is_an_error_naming_kv_cache_tokens() {
    // usize::MAX tokens: the byte count overflows (it used to be an unchecked multiplication).
    let message = assert_rejected("kv_cache_tokens", |c| c.kv_cache_tokens = usize::MAX);
    assert!(message.contains("overflow"), "{message}");
    // 2^40 tokens fit in usize arithmetic but need ~23 PiB of KV for SmolLM2.
    let message = assert_rejected("kv_cache_tokens", |c| c.kv_cache_tokens = 1 << 40);
    assert!(message.contains("memory"), "{message}");
    // A huge block on its own is as bad: one block of usize::MAX tokens.
    assert_rejected("kv_cache_tokens", |c| {
        c.kv_cache_tokens = usize::MAX;
        c.block_size = usize::MAX;
    });
}

#[test]
fn threads_out_of_range_is_an_error_naming_threads() {
    let max = EngineConfig::max_threads();
    assert!(max >= 4, "4 per CPU, at least one CPU: {max}");
    for bad in [0, max + 1, 1 << 20, usize::MAX] {
        let message = assert_rejected("threads", |c| c.threads = Some(bad));
        assert!(message.contains(&max.to_string()), "the limit is stated: {message}");
    }
}

#[test]
fn zero_sizes_are_errors_naming_the_setting() {
    assert_rejected("max_running", |c| c.max_running = 0);
    assert_rejected("max_batch_tokens", |c| c.max_batch_tokens = 0);
    assert_rejected("max_prefill_tokens", |c| c.max_prefill_tokens = 0);
    assert_rejected("block_size", |c| c.block_size = 0);
    assert_rejected("max_queue", |c| c.max_queue = 0);
    assert_rejected("context_length", |c| c.context_length = Some(0));
    assert_rejected("kv_cache_tokens", |c| c.kv_cache_tokens = 0);
    assert_rejected("kv_cache_tokens", |c| c.block_size = c.kv_cache_tokens + 1);
}

#[test]
fn absurd_step_budgets_and_targets_are_errors_naming_the_setting() {
    for bad in [(1 << 20) + 1, usize::MAX] {
        assert_rejected("max_batch_tokens", |c| c.max_batch_tokens = bad);
        assert_rejected("max_prefill_tokens", |c| c.max_prefill_tokens = bad);
    }
    for bad in [0.0, -5.0, 10_000.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let message = assert_rejected("target_step_ms", |c| c.target_step_ms = Some(bad));
        assert!(message.contains("10000"), "the limit is stated: {message}");
    }
}

/// A token of `text` whose bytes alone are not valid UTF-8 (part of a multi-byte character).
fn partial_utf8_token(engine: &Engine, text: &str) -> u32 {
    let ids = engine.tokenize(text, false).unwrap();
    let tokenizer = engine.tokenizer();
    let joined: Vec<u8> = ids.iter().flat_map(|&id| tokenizer.token_bytes(id).unwrap().to_vec()).collect();
    assert_eq!(joined, text.as_bytes(), "the tokens of {text:?} spell its bytes");
    *ids.iter()
        .find(|&&id| std::str::from_utf8(tokenizer.token_bytes(id).unwrap()).is_err())
        .unwrap_or_else(|| panic!("no token of {text:?} is a partial UTF-8 sequence: {ids:?}"))
}

#[test]
fn logprob_bytes_are_the_raw_bytes_of_a_partial_utf8_token() {
    let engine = engine();
    let partial = partial_utf8_token(engine, "🦀");
    let tokenizer = engine.tokenizer();
    let expected = tokenizer.token_bytes(partial).unwrap().to_vec();
    // The bias forces the partial token, so it is both the sampled token and the top alternative.
    let params = SamplingParams { logprobs: Some(3), logit_bias: vec![(partial, 100.0)], ..greedy(1) };
    let completion = engine.generate(Request::new("The crab emoji is", params)).unwrap();
    assert_eq!(completion.token_ids, [partial]);
    let logprobs = &completion.logprobs[0];
    assert_eq!(logprobs.bytes, expected, "the sampled token's own bytes");
    assert!(std::str::from_utf8(&logprobs.bytes).is_err(), "a partial sequence, not U+FFFD: {:?}", logprobs.bytes);
    assert_eq!(logprobs.top[0].token_id, partial);
    assert_eq!(logprobs.top[0].bytes, expected);
    for alternative in &logprobs.top {
        assert_eq!(alternative.bytes, tokenizer.token_bytes(alternative.token_id).unwrap(), "{alternative:?}");
    }
}

/// Waits (bounded, as a hang guard only) until `condition` holds on the engine's metrics.
fn wait_for_metrics(engine: &Engine, what: &str, condition: impl Fn(&cortexstream::MetricsSnapshot) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !condition(&engine.metrics()) {
        assert!(Instant::now() < deadline, "{what}: {:?}", engine.metrics());
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reads events until the `Finished` one; returns the tokens seen and the final event.
fn drain(handle: &RequestHandle) -> (usize, Event) {
    let mut tokens = 0;
    loop {
        match handle.recv().expect("a Finished event ends every request") {
            Event::Token { .. } => tokens += 1,
            finished @ Event::Finished { .. } => return (tokens, finished),
        }
    }
}

fn assert_all_blocks_free(engine: &Engine) {
    wait_for_metrics(engine, "every KV block is free again", |m| m.kv_blocks_free == m.kv_blocks_total);
}

#[test]
fn cancel_during_decode_takes_effect_within_one_step() {
    // Several rounds, cancelling after a different number of tokens each time, so a cancel
    // that waited for some later step (every n-th step, say) cannot pass by luck of phase.
    for tokens_before_cancel in 3..7 {
        cancel_after(engine(), tokens_before_cancel);
    }
}

fn cancel_after(engine: &Engine, tokens_before_cancel: usize) {
    let handle = engine.submit(Request::new("Once upon a time", greedy(2000))).unwrap();
    let mut seen = 0;
    while seen < tokens_before_cancel {
        if let Some(Event::Token { .. }) = handle.recv() {
            seen += 1;
        }
    }
    // Take what is already queued, so every token counted below was sampled after the cancel.
    while let Ok(Event::Token { .. }) = handle.try_recv() {
        seen += 1;
    }
    handle.cancel();
    // Read after cancel(): only the step already past its cancel check may still complete.
    let steps_before = engine.metrics().steps;
    let (after_cancel, finished) = drain(&handle);
    let steps_after = engine.metrics().steps;
    let Event::Finished { reason, usage, .. } = finished else { unreachable!() };
    assert_eq!(reason, FinishReason::Cancelled);
    // The step running when cancel() was called may finish; no later step includes the request.
    assert!(steps_after - steps_before <= 1, "{} steps ran after cancel()", steps_after - steps_before);
    // That step's token, plus at most one that raced the drain above.
    assert!(after_cancel <= 2, "{after_cancel} tokens arrived after cancel()");
    assert_eq!(usage.completion_tokens, seen + after_cancel);
    assert_all_blocks_free(engine);
}

#[test]
fn cancel_during_a_long_prefill_ends_it_within_one_step_with_no_tokens() {
    let engine = engine();
    let sentence = engine.tokenize(" The river runs past the old mill and under the stone bridge.", false).unwrap();
    // ~3000 tokens: 12 prefill steps of `LONE_PROMPT_CHUNK`, far more than the cancel may take.
    let prompt: Vec<u32> = sentence.iter().copied().cycle().take(3000).collect();
    let before = engine.metrics();
    let handle = engine.submit(Request::new(Prompt::Tokens(prompt.clone()), greedy(16))).unwrap();
    wait_for_metrics(engine, "the prefill started", |m| m.prefill_tokens_total > before.prefill_tokens_total);
    handle.cancel();
    let steps_before = engine.metrics().steps;
    let (tokens, finished) = drain(&handle);
    let after = engine.metrics();
    let Event::Finished { reason, usage, .. } = finished else { unreachable!() };
    assert_eq!(reason, FinishReason::Cancelled);
    assert_eq!((tokens, usage.completion_tokens), (0, 0), "no token is sampled for a cancelled prefill");
    assert!(after.steps - steps_before <= 1, "{} steps ran after cancel()", after.steps - steps_before);
    let prefilled = after.prefill_tokens_total - before.prefill_tokens_total;
    assert!(prefilled < prompt.len() as u64, "the cancel came during the prefill: {prefilled} tokens computed");
    assert_all_blocks_free(engine);
}

// ---------- wait limits (the timeouts of Python's next_chunk and C's next_event) ----------

fn param_of(result: cortexstream::Result<WaitLimit>) -> Option<&'static str> {
    result.err().and_then(|e| e.param())
}

#[test]
fn nan_and_negative_timeouts_are_errors_naming_the_argument() {
    for bad in [f64::NAN, -1.0, -0.001, f64::NEG_INFINITY] {
        assert_eq!(param_of(WaitLimit::from_secs_f64(bad, "timeout")), Some("timeout"), "{bad}");
    }
    assert_eq!(param_of(WaitLimit::from_millis(-2, "timeout_ms")), Some("timeout_ms"));
}

#[test]
fn infinite_and_huge_timeouts_wait_forever() {
    for forever in [f64::INFINITY, f64::MAX, 1e300] {
        let limit = WaitLimit::from_secs_f64(forever, "timeout").unwrap();
        assert_eq!(limit, WaitLimit::Forever, "{forever}");
        assert_eq!(limit.deadline(), None);
    }
    // Representable as a Duration but not as an Instant from now: no deadline either.
    assert_eq!(WaitLimit::from_secs_f64(1e19, "timeout").unwrap().deadline(), None);
}

#[test]
fn finite_timeouts_are_kept() {
    assert_eq!(WaitLimit::from_secs_f64(0.0, "timeout").unwrap(), WaitLimit::For(Duration::ZERO));
    assert_eq!(WaitLimit::from_secs_f64(1.5, "timeout").unwrap(), WaitLimit::For(Duration::from_millis(1500)));
    assert_eq!(WaitLimit::from_millis(250, "timeout_ms").unwrap(), WaitLimit::For(Duration::from_millis(250)));
}
