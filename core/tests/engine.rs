//! End-to-end engine behaviour with the real SmolLM2 model: continuous batching, batch
//! invariance, cancellation, prefix caching, stop strings, seeded sampling, validation.
//! Run with `--test-threads=1`: the tests share one engine and measure its metrics.
//! Every test wraps the engine it uses in `AllBlocksFreeAfter`: when it ends, the engine is
//! idle and every KV block is back.

mod common;

use common::greedy;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::{wait_idle, AllBlocksFreeAfter};

use cortexstream::{
    ChatMessage, Engine, EngineConfig, Error, Event, FinishReason, Prompt, Request, SamplingParams, StopReason,
};

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = EngineConfig::new(common::smollm2_path());
        config.embedding_model = Some(common::minilm_dir());
        Engine::new(config).expect("the default model loads")
    })
}

/// llama.cpp's greedy ids up to float64's first near tie (the fixture's `greedy_near_tie`).
fn reference_greedy_ids() -> Vec<u32> {
    common::reference()["raw_completion"]["greedy_token_ids"]
        .as_array()
        .expect("greedy ids")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .take(common::clear_greedy_tokens())
        .collect()
}

#[test]
fn raw_completion_matches_reference_greedy_tokens() {
    let engine = AllBlocksFreeAfter(engine());
    let expected = reference_greedy_ids();
    let completion = engine.generate(Request::new("The quick brown fox", greedy(expected.len()))).unwrap();
    assert_eq!(completion.token_ids, expected);
    assert_eq!(completion.finish_reason, FinishReason::Length);
    assert_eq!(completion.usage.prompt_tokens, 4);
    assert_eq!(completion.usage.completion_tokens, expected.len());
    assert!(completion.text.starts_with(" with a quick brown bear."), "{:?}", completion.text);
    let t = completion.timings;
    assert!(t.time_to_first_token_ns > 0 && t.total_ns >= t.time_to_first_token_ns && t.per_token_ns > 0, "{t:?}");
}

#[test]
fn stream_concatenation_equals_completion_text() {
    let engine = AllBlocksFreeAfter(engine());
    let handle = engine.submit(Request::new("The quick brown fox", greedy(20))).unwrap();
    let mut streamed = String::new();
    let mut tokens = 0;
    for event in handle {
        match event {
            Event::Token { text, .. } => {
                streamed.push_str(&text);
                tokens += 1;
            }
            Event::Finished { reason, usage, .. } => {
                assert_eq!(reason, FinishReason::Length);
                assert_eq!(usage.completion_tokens, tokens);
            }
        }
    }
    let whole = engine.generate(Request::new("The quick brown fox", greedy(20))).unwrap();
    assert_eq!(streamed, whole.text);
}

/// An engine like [`engine`] with a fixed step budget: a test that counts steps to show its
/// requests shared them must not depend on the machine's load (the adaptive budget cuts prompt
/// chunks on a busy CPU, which adds steps without changing any result).
fn fixed_budget_engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = EngineConfig::new(common::smollm2_path());
        config.target_step_ms = None;
        Engine::new(config).expect("the default model loads")
    })
}

#[test]
fn batch_invariance_alone_and_among_29_others() {
    let engine = AllBlocksFreeAfter(fixed_budget_engine());
    let prompts = ["The quick brown fox", "Once upon a time, in a small village,", "The capital of France is"];
    let alone: Vec<Vec<u32>> =
        prompts.iter().map(|p| engine.generate(Request::new(*p, greedy(16))).unwrap().token_ids).collect();

    // Submit 29 other requests of various lengths first so the three share steps with them,
    // some still in prefill, some decoding.
    let before = engine.metrics();
    let fillers: Vec<_> = (0..29)
        .map(|i| {
            let prompt = format!("Request number {i}: write a sentence about the number {}.", i * 7);
            engine.submit(Request::new(prompt, greedy(8 + i % 13))).unwrap()
        })
        .collect();
    let batched: Vec<_> = prompts.iter().map(|p| engine.submit(Request::new(*p, greedy(16))).unwrap()).collect();
    let batched: Vec<Vec<u32>> = batched.into_iter().map(|h| h.wait().token_ids).collect();
    for f in fillers {
        assert_eq!(f.wait().finish_reason, FinishReason::Length);
    }
    assert_eq!(alone, batched);
    // They really were batched, judged on this phase's steps alone (metric deltas): the steps
    // carried 8+ tokens and sampled 4+ tokens each on average (one request at a time: ~2 and 1).
    let after = engine.metrics();
    let steps = after.steps - before.steps;
    let batched_tokens = after.batch_size.sum - before.batch_size.sum;
    assert!(batched_tokens >= 8.0 * steps as f64, "{batched_tokens} tokens in {steps} steps: not batched");
    let generated = after.generated_tokens_total - before.generated_tokens_total;
    assert!(steps * 4 <= generated, "{generated} tokens in {steps} steps: not batched");
}

/// Plain greedy rows, whose output head keeps only the argmax and never writes their logits,
/// pick the tokens that greedy rows needing their logits (log-probabilities asked) pick: alone,
/// and sharing steps with each other (a batch that mixes both kinds of rows).
#[test]
fn greedy_tokens_are_the_same_whether_or_not_the_head_writes_the_logits() {
    let engine = AllBlocksFreeAfter(fixed_budget_engine());
    let prompts = ["The quick brown fox", "Once upon a time,", "1, 2, 3, 4,", "def main():", "Paris is the"];
    let with_logits = |n| SamplingParams { logprobs: Some(1), ..greedy(n) };
    let alone: Vec<Vec<u32>> =
        prompts.iter().map(|p| engine.generate(Request::new(*p, with_logits(12))).unwrap().token_ids).collect();
    let before = engine.metrics();
    let handles: Vec<_> = prompts
        .iter()
        .flat_map(|p| [greedy(12), with_logits(12)].map(|params| engine.submit(Request::new(*p, params)).unwrap()))
        .collect();
    let completions: Vec<_> = handles.into_iter().map(|h| h.wait()).collect();
    for (i, pair) in completions.chunks_exact(2).enumerate() {
        let (argmax_only, logit_row) = (&pair[0], &pair[1]);
        assert_eq!(argmax_only.token_ids, alone[i], "prompt {i}: greedy from the head's argmax");
        assert_eq!(logit_row.token_ids, alone[i], "prompt {i}: greedy from the logits, batched");
        assert!(argmax_only.logprobs.is_empty(), "prompt {i}: no logprobs were asked");
        // The logit row still got its logits: its token is its own most likely one.
        for (lp, &id) in logit_row.logprobs.iter().zip(&logit_row.token_ids) {
            assert_eq!(lp.top.first().map(|t| t.token_id), Some(id), "prompt {i}");
        }
        assert_eq!(logit_row.logprobs.len(), 12, "prompt {i}");
    }
    // Both kinds shared steps: ten requests, far fewer steps than ten apart would take.
    let steps = engine.metrics().steps - before.steps;
    assert!(steps <= 2 * 13, "{steps} steps for ten 12-token requests: not batched");
}

#[test]
fn thirty_two_concurrent_requests_finish_with_correct_usage() {
    let engine = AllBlocksFreeAfter(engine());
    let handles: Vec<_> = (0..32)
        .map(|i| {
            let prompt = format!("Write a short note number {i}.");
            let prompt_len = engine.tokenize(&prompt, true).unwrap().len();
            let max_tokens = 4 + i % 9;
            (engine.submit(Request::new(prompt, greedy(max_tokens))).unwrap(), prompt_len, max_tokens)
        })
        .collect();
    let threads: Vec<_> = handles
        .into_iter()
        .map(|(h, prompt_len, max_tokens)| {
            std::thread::spawn(move || {
                let c = h.wait();
                assert_eq!(c.finish_reason, FinishReason::Length);
                assert_eq!(c.usage.prompt_tokens, prompt_len);
                assert_eq!(c.usage.completion_tokens, max_tokens);
                assert_eq!(c.token_ids.len(), max_tokens);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("request thread");
    }
    wait_idle(&engine);
    let m = engine.metrics();
    assert_eq!(m.kv_blocks_free, m.kv_blocks_total, "every block is back");
}

#[test]
fn cancel_mid_stream_ends_promptly_and_frees_blocks() {
    let engine = AllBlocksFreeAfter(engine());
    wait_idle(&engine);
    let before = engine.metrics();
    let handle = engine.submit(Request::new("Tell me a long story about dragons.", greedy(500))).unwrap();
    let mut got = 0;
    while got < 3 {
        if let Some(Event::Token { .. }) = handle.recv() {
            got += 1;
        }
    }
    // Tokens already queued in the channel were generated before the cancel; count what the
    // engine generates once `cancel()` has returned instead (this is the only running request).
    // Read after the cancel, not before: on a loaded machine spawning the cancelling thread can
    // take longer than a step, and tokens made before the cancel are not the engine's delay.
    let canceller = handle.canceller();
    std::thread::spawn(move || canceller.cancel()).join().unwrap();
    let generated_at_cancel = engine.metrics().generated_tokens_total;
    // Cancelling again is a no-op.
    handle.cancel();
    // Within one step: the engine generates at most a token or two more before Finished.
    let finished = loop {
        match handle.recv_timeout(Duration::from_secs(10)).expect("finished promptly") {
            Event::Token { .. } => {}
            Event::Finished { reason, usage, .. } => break (reason, usage),
        }
    };
    assert_eq!(finished.0, FinishReason::Cancelled);
    let after_cancel = engine.metrics().generated_tokens_total - generated_at_cancel;
    assert!(after_cancel <= 2, "{after_cancel} tokens generated after cancel");
    assert!(finished.1.completion_tokens >= 3);
    wait_idle(&engine);
    let after = engine.metrics();
    assert_eq!(after.requests_cancelled, before.requests_cancelled + 1);
    assert_eq!(after.kv_blocks_free, after.kv_blocks_total);
}

#[test]
fn dropping_a_handle_cancels_the_request() {
    let engine = AllBlocksFreeAfter(engine());
    wait_idle(&engine);
    let before = engine.metrics().requests_cancelled;
    let handle = engine.submit(Request::new("Count to one thousand.", greedy(1000))).unwrap();
    let _ = handle.recv();
    drop(handle);
    wait_idle(&engine);
    assert_eq!(engine.metrics().requests_cancelled, before + 1);
}

#[test]
fn shared_system_prompt_is_served_from_the_prefix_cache() {
    let engine = AllBlocksFreeAfter(engine());
    let system = "You are a meticulous assistant. ".repeat(20);
    let chat = |question: &str| {
        Prompt::Chat(vec![ChatMessage::new("system", system.clone()), ChatMessage::new("user", question)])
    };
    let first = engine.generate(Request::new(chat("What is two plus two?"), greedy(2))).unwrap();
    let before = engine.metrics();
    let second = engine.generate(Request::new(chat("Name a colour."), greedy(2))).unwrap();
    let after = engine.metrics();
    let hit = (after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens) as usize;
    assert!(first.usage.prompt_tokens > 100);
    assert!(hit >= 96, "only {hit} prompt tokens came from the cache");
    assert_eq!(second.usage.cached_prompt_tokens, hit);
    let prefilled = (after.prefill_tokens_total - before.prefill_tokens_total) as usize;
    assert_eq!(prefilled, second.usage.prompt_tokens - hit, "the cached part was not recomputed");
}

#[test]
fn stop_string_spanning_tokens_is_not_emitted() {
    // Greedy continuation is " with a quick brown bear." — "own be" spans " brown" and " bear".
    let params = SamplingParams { stop: vec!["own be".into()], ..greedy(30) };
    let engine = AllBlocksFreeAfter(engine());
    let handle = engine.submit(Request::new("The quick brown fox", params)).unwrap();
    let mut text = String::new();
    let mut reason = None;
    for event in handle {
        match event {
            Event::Token { text: t, .. } => text.push_str(&t),
            Event::Finished { reason: r, .. } => reason = Some(r),
        }
    }
    assert_eq!(text, " with a quick br");
    assert_eq!(reason, Some(FinishReason::Stop));
}

#[test]
fn the_final_event_and_the_completion_say_which_stop_string_ended_the_request() {
    // " with a quick brown bear.": "quick" completes first although "bear" is listed first.
    let params = SamplingParams { stop: vec!["bear".into(), "nothing".into(), "quick".into()], ..greedy(30) };
    let engine = AllBlocksFreeAfter(engine());
    let handle = engine.submit(Request::new("The quick brown fox", params)).unwrap();
    let mut final_stop = None;
    for event in handle {
        if let Event::Finished { reason, stop_reason, .. } = event {
            assert_eq!(reason, stop_reason.finish_reason());
            final_stop = Some(stop_reason);
        }
    }
    assert_eq!(final_stop, Some(StopReason::StopString("quick".into())));
}

#[test]
fn a_requested_stop_token_id_is_reported_with_its_id() {
    let engine = AllBlocksFreeAfter(engine());
    let third = reference_greedy_ids()[2];
    let params = SamplingParams { stop_token_ids: vec![third], ..greedy(30) };
    let done = engine.generate(Request::new("The quick brown fox", params)).unwrap();
    assert_eq!(done.finish_reason, FinishReason::Stop);
    assert_eq!(done.stop_reason, StopReason::StopTokenId(third));
    assert_eq!(done.token_ids.last(), Some(&third));
}

#[test]
fn the_end_of_generation_token_is_reported_as_eos_unless_the_request_named_it() {
    let engine = AllBlocksFreeAfter(engine());
    let prompt = || Prompt::Chat(vec![ChatMessage::new("user", "Say hello.")]);
    let params = SamplingParams { max_tokens: Some(64), ..SamplingParams::greedy() };
    let done = engine.generate(Request::new(prompt(), params.clone())).unwrap();
    let last = *done.token_ids.last().expect("a token");
    assert!(engine.tokenizer().end_of_generation_ids().contains(&last), "{:?} did not end at EOS", done.text);
    assert_eq!(done.finish_reason, FinishReason::Stop);
    assert_eq!(done.stop_reason, StopReason::EndOfGeneration(last));

    let named = SamplingParams { stop_token_ids: vec![last], ..params };
    let done = engine.generate(Request::new(prompt(), named)).unwrap();
    assert_eq!(done.stop_reason, StopReason::StopTokenId(last));
}

#[test]
fn length_and_cancel_are_stop_reasons_too() {
    let engine = AllBlocksFreeAfter(engine());
    let done = engine.generate(Request::new("The quick brown fox", greedy(3))).unwrap();
    assert_eq!((done.finish_reason, done.stop_reason), (FinishReason::Length, StopReason::Length));

    let handle = engine.submit(Request::new("The quick brown fox", greedy(10_000))).unwrap();
    handle.cancel();
    let done = handle.wait();
    assert_eq!((done.finish_reason, done.stop_reason), (FinishReason::Cancelled, StopReason::Cancelled));
}

#[test]
fn multibyte_output_is_streamed_whole() {
    let engine = AllBlocksFreeAfter(engine());
    let prompt = "中文：你好，世界。我爱北京天安门。你好，世界。我爱北京";
    let handle = engine.submit(Request::new(prompt, greedy(24))).unwrap();
    let mut streamed = String::new();
    let mut ids = Vec::new();
    for event in handle {
        if let Event::Token { id, text, .. } = event {
            ids.push(id);
            streamed.push_str(&text);
        }
    }
    assert!(!streamed.is_ascii(), "expected non-ASCII output, got {streamed:?}");
    // Only a character cut off by max_tokens may end as U+FFFD, as in a lossy decode.
    assert!(!streamed.trim_end_matches('\u{FFFD}').contains('\u{FFFD}'), "{streamed:?}");
    // Some token in the output is a fragment of a character on its own...
    let tok = engine.tokenizer();
    assert!(ids.iter().any(|&id| std::str::from_utf8(tok.token_bytes(id).unwrap_or(&[])).is_err()));
    // ...and the streamed text is exactly the decoded output.
    assert_eq!(streamed, engine.detokenize(&ids).unwrap());
}

#[test]
fn seeded_sampling_is_reproducible() {
    let engine = AllBlocksFreeAfter(engine());
    let sample = |seed| {
        let params = SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            max_tokens: Some(24),
            ignore_eos: true,
            ..Default::default()
        };
        engine.generate(Request::new("My favourite animal is", params)).unwrap().token_ids
    };
    let a = sample(42);
    assert_eq!(a, sample(42));
    let others: Vec<_> = (1..=3).map(sample).collect();
    assert!(others.iter().any(|o| *o != a), "different seeds should differ");
}

/// Rows sampled from logits are picked on the engine's pool when several share a step (then
/// streamed in plan order on the engine thread): each seeded request gets the tokens it gets
/// alone, and its events arrive in order (the streamed ids and text are the completion's).
#[test]
fn seeded_sampling_is_the_same_alone_and_picked_on_the_pool_beside_others() {
    let mut config = EngineConfig::new(common::smollm2_path());
    // Two threads: the pool has another thread to sample on (one would sample inline).
    config.threads = Some(2);
    config.target_step_ms = None;
    let engine = AllBlocksFreeAfter(Engine::new(config).expect("the default model loads"));
    let sampled = |seed: u64| SamplingParams {
        temperature: 0.9,
        seed: Some(seed),
        max_tokens: Some(16),
        ignore_eos: true,
        ..Default::default()
    };
    // Sampled rows beside a greedy row (the head's argmax) and a greedy row with logprobs.
    let requests: Vec<(String, SamplingParams)> = (0..8u64)
        .map(|i| (format!("Story {i}: the {} was", ["cat", "ship", "storm", "king"][i as usize % 4]), sampled(100 + i)))
        .chain([("The capital of France is".to_string(), greedy(16))])
        .chain([("Count: 1, 2, 3,".to_string(), SamplingParams { logprobs: Some(2), ..greedy(16) })])
        .collect();
    let alone: Vec<_> =
        requests.iter().map(|(p, params)| engine.generate(Request::new(p.as_str(), params.clone())).unwrap()).collect();
    let before = engine.metrics();
    let handles: Vec<_> =
        requests.iter().map(|(p, params)| engine.submit(Request::new(p.as_str(), params.clone())).unwrap()).collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let (mut ids, mut text) = (Vec::new(), String::new());
        for event in handle {
            match event {
                Event::Token { id, text: piece, .. } => {
                    ids.push(id);
                    text.push_str(&piece);
                }
                Event::Finished { reason, .. } => assert_eq!(reason, FinishReason::Length, "request {i}"),
            }
        }
        assert_eq!(ids, alone[i].token_ids, "request {i}: batched and sampled on the pool");
        assert_eq!(text, alone[i].text, "request {i}: streamed in order");
    }
    let steps = engine.metrics().steps - before.steps;
    assert!(steps <= 2 * 17, "{steps} steps for ten 16-token requests: not batched");
}

#[test]
fn invalid_requests_get_typed_errors_and_the_engine_keeps_serving() {
    let engine = AllBlocksFreeAfter(engine());
    let bad = |f: fn(&mut SamplingParams)| {
        let mut p = SamplingParams::default();
        f(&mut p);
        engine.submit(Request::new("hi", p)).unwrap_err()
    };
    let param_of = |e: Error| match e {
        Error::InvalidRequest { param, .. } => param,
        other => panic!("expected InvalidRequest, got {other:?}"),
    };
    assert_eq!(param_of(bad(|p| p.temperature = -1.0)), "temperature");
    assert_eq!(param_of(bad(|p| p.temperature = f32::NAN)), "temperature");
    assert_eq!(param_of(bad(|p| p.top_p = 0.0)), "top_p");
    assert_eq!(param_of(bad(|p| p.top_p = 1.5)), "top_p");
    assert_eq!(param_of(bad(|p| p.max_tokens = Some(0))), "max_tokens");
    assert_eq!(param_of(bad(|p| p.min_p = 2.0)), "min_p");
    assert_eq!(param_of(bad(|p| p.logprobs = Some(21))), "logprobs");
    assert_eq!(param_of(bad(|p| p.stop = vec![String::new()])), "stop");
    assert_eq!(param_of(engine.submit(Request::new("", SamplingParams::default())).unwrap_err()), "prompt");
    assert_eq!(
        param_of(engine.submit(Request::new(Prompt::Tokens(vec![49152]), SamplingParams::default())).unwrap_err()),
        "prompt"
    );
    assert_eq!(
        param_of(engine.submit(Request::new(Prompt::Chat(vec![]), SamplingParams::default())).unwrap_err()),
        "messages"
    );

    let long = "word ".repeat(9000);
    match engine.submit(Request::new(long, SamplingParams::default())).unwrap_err() {
        Error::ContextLengthExceeded { prompt_tokens, context_length, .. } => {
            assert!(prompt_tokens > context_length);
        }
        other => panic!("expected ContextLengthExceeded, got {other:?}"),
    }
    // Still serving.
    let c = engine.generate(Request::new("The quick brown fox", greedy(3))).unwrap();
    assert_eq!(c.token_ids, reference_greedy_ids()[..3]);
}

#[test]
fn callback_that_panics_fails_only_its_request() {
    let engine = AllBlocksFreeAfter(engine());
    let handle = engine
        .submit_with_callback(
            Request::new("The quick brown fox", greedy(10)),
            Box::new(|event| {
                if let Event::Token { .. } = event {
                    panic!("consumer bug");
                }
                true
            }),
        )
        .unwrap();
    let c = handle.wait();
    assert_eq!(c.finish_reason, FinishReason::Error);
    assert!(c.error.unwrap_or_default().contains("consumer bug"));
    let ok = engine.generate(Request::new("The quick brown fox", greedy(2))).unwrap();
    assert_eq!(ok.finish_reason, FinishReason::Length);
}

#[test]
fn logprobs_are_reported_per_token() {
    let params = SamplingParams { logprobs: Some(3), ..greedy(4) };
    let engine = AllBlocksFreeAfter(engine());
    let c = engine.generate(Request::new("The quick brown fox", params)).unwrap();
    assert_eq!(c.logprobs.len(), 4);
    for (lp, &id) in c.logprobs.iter().zip(&c.token_ids) {
        assert_eq!(lp.top.len(), 3);
        assert_eq!(lp.top[0].token_id, id, "greedy picks the most likely token");
        assert!(lp.logprob <= 0.0 && (lp.logprob - lp.top[0].logprob).abs() < 1e-6);
    }
}

#[test]
fn shutdown_cancels_in_flight_requests_then_rejects_new_work() {
    // A separate, small engine: shutting down the shared one would break the other tests.
    let mut config = EngineConfig::new(common::smollm2_path());
    config.kv_cache_tokens = 2048;
    let engine = AllBlocksFreeAfter(Arc::new(Engine::new(config).unwrap()));
    let handles: Vec<_> =
        (0..4).map(|_| engine.submit(Request::new("Tell me a story.", greedy(2000))).unwrap()).collect();
    let _ = handles[0].recv();
    engine.shutdown();
    for h in handles {
        assert_eq!(h.wait().finish_reason, FinishReason::Cancelled);
    }
    assert!(matches!(engine.submit(Request::new("hi", greedy(1))), Err(Error::EngineClosed)));
    engine.shutdown(); // idempotent
}

#[test]
fn unloadable_models_give_errors_naming_the_file() {
    let missing = std::path::Path::new("/nonexistent/model.gguf");
    match Engine::new(EngineConfig::new(missing)).unwrap_err() {
        Error::ModelLoad { path, .. } => assert_eq!(path, missing),
        other => panic!("expected ModelLoad, got {other:?}"),
    }
    let not_gguf = common::minilm_dir().join("config.json");
    let err = Engine::new(EngineConfig::new(&not_gguf)).unwrap_err();
    assert!(matches!(err, Error::ModelLoad { .. }), "{err:?}");
    assert!(err.to_string().contains("config.json") && err.to_string().contains("not a GGUF"), "{err}");
}

#[test]
fn past_the_queue_limit_submit_fails_with_overloaded() {
    let mut config = EngineConfig::new(common::smollm2_path());
    config.max_running = 1;
    config.max_queue = 1;
    config.kv_cache_tokens = 2048;
    let engine = AllBlocksFreeAfter(Engine::new(config).unwrap());
    let running = engine.submit(Request::new("Tell me a story.", greedy(2000))).unwrap();
    let _ = running.recv(); // it is running now, so the queue is empty
    let waiting = engine.submit(Request::new("Tell me a story.", greedy(4))).unwrap();
    match engine.submit(Request::new("Tell me a story.", greedy(4))) {
        Err(Error::Overloaded(message)) => assert!(message.contains("queue is full"), "{message}"),
        other => panic!("expected Overloaded, got {other:?}"),
    }
    assert_eq!(engine.metrics().requests_rejected, 1);
    running.cancel();
    assert_eq!(waiting.wait().finish_reason, FinishReason::Length, "the queued request still runs");
}

#[test]
fn preempted_sequences_resume_and_lose_nothing() {
    // 16 blocks of 16 tokens: four sequences of ~90 tokens need ~24, so some are preempted
    // and later recomputed. Their output must equal the unconstrained engine's.
    let mut config = EngineConfig::new(common::smollm2_path());
    config.kv_cache_tokens = 256;
    let small = AllBlocksFreeAfter(Engine::new(config).unwrap());
    let engine = AllBlocksFreeAfter(engine());
    let prompts: Vec<String> = (0..4).map(|i| format!("Story {i}: the dragon and the knight")).collect();
    let expected: Vec<Vec<u32>> =
        prompts.iter().map(|p| engine.generate(Request::new(p.as_str(), greedy(80))).unwrap().token_ids).collect();
    let handles: Vec<_> = prompts.iter().map(|p| small.submit(Request::new(p.as_str(), greedy(80))).unwrap()).collect();
    let got: Vec<Vec<u32>> = handles.into_iter().map(|h| h.wait().token_ids).collect();
    let m = small.metrics();
    assert!(m.preemptions > 0, "the cache was large enough: {m:?}");
    assert_eq!(got, expected);
    assert_eq!(m.requests_finished, 4);
}

#[test]
fn max_queue_is_exact_under_concurrent_submitters() {
    // One running slot, taken by a long request, and 5 queue places: of 8000 requests sent by
    // 32 threads at once (and for many engine steps: the engine thread must not disturb the
    // count while they hammer it), exactly 5 are accepted and the rest refused as overloaded.
    let mut config = EngineConfig::new(common::smollm2_path());
    config.max_running = 1;
    config.max_queue = 5;
    config.kv_cache_tokens = 2048;
    let engine = AllBlocksFreeAfter(Arc::new(Engine::new(config).unwrap()));
    let running = engine.submit(Request::new("Tell me a story.", greedy(2000))).unwrap();
    let _ = running.recv(); // it holds the running slot now

    let start = Arc::new(std::sync::Barrier::new(32));
    let submitters: Vec<_> = (0..32)
        .map(|t| {
            let (engine, start) = (Arc::clone(&engine.0), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                (0..250).map(|i| engine.submit(Request::new(format!("Note {t}-{i}:"), greedy(2)))).collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<_> = submitters.into_iter().flat_map(|s| s.join().expect("submitter")).collect();
    let (accepted, refused): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_ok());
    assert_eq!(accepted.len(), 5, "accepted past max_queue = 5 with the running slot taken");
    for r in refused {
        match r {
            Err(Error::Overloaded(message)) => assert!(message.contains("max_queue = 5"), "{message}"),
            other => panic!("expected Overloaded, got {other:?}"),
        }
    }
    assert_eq!(engine.metrics().requests_rejected, 7995);

    // The queue drains once the slot frees, and its places are given back.
    running.cancel();
    for handle in accepted.into_iter().flatten() {
        assert_eq!(handle.wait().finish_reason, FinishReason::Length);
    }
    let again: Vec<_> = (0..5).map(|i| engine.submit(Request::new(format!("Again {i}:"), greedy(2)))).collect();
    assert!(again.iter().all(Result::is_ok), "queue places were not given back: {again:?}");
    for handle in again.into_iter().flatten() {
        assert_eq!(handle.wait().finish_reason, FinishReason::Length);
    }
}

/// Submits a greedy request whose callback reports, for each token, the engine step that
/// produced it (callbacks run on the engine thread right after their step's forward pass).
fn submit_logging_steps(
    prompt: Prompt,
    max_tokens: usize,
) -> (cortexstream::RequestHandle, std::sync::mpsc::Receiver<u64>) {
    let (steps, log) = std::sync::mpsc::channel();
    let callback = Box::new(move |event: &Event| {
        if let Event::Token { .. } = event {
            let _ = steps.send(engine().metrics().steps);
        }
        true
    });
    (engine().submit_with_callback(Request::new(prompt, greedy(max_tokens)), callback).unwrap(), log)
}

#[test]
fn running_streams_decode_every_step_while_a_long_prompt_is_prefilled() {
    let engine = AllBlocksFreeAfter(engine());
    let hang_guard = Duration::from_secs(600);
    let streams: Vec<_> = ["Once upon a time", "The capital of France is"]
        .into_iter()
        .map(|p| submit_logging_steps(Prompt::Text(p.into()), 2000))
        .collect();
    for (_, log) in &streams {
        log.recv_timeout(hang_guard).expect("the stream is running");
    }

    // ~4k tokens nobody has sent before (so none come from the prefix cache): 6+ steps, as the
    // adaptive budget's first chunk is 64 tokens and a chunk at most doubles the largest before.
    let text: String = (0..4000).map(|i| format!("{} ", i * 7919 % 10007)).collect();
    let long_prompt: Vec<u32> = engine.tokenize(&text, true).unwrap().into_iter().take(4000).collect();
    assert_eq!(long_prompt.len(), 4000);
    let submitted_after = engine.metrics().steps;
    let (long, long_log) = submit_logging_steps(Prompt::Tokens(long_prompt), 1);
    let first_token_step = long_log.recv_timeout(hang_guard).expect("the long prompt's first token");
    assert!(
        first_token_step - submitted_after >= 6,
        "the prefill took only {first_token_step} - {submitted_after} steps"
    );

    long.wait();
    for (handle, log) in streams {
        handle.cancel();
        handle.wait();
        let steps: Vec<u64> = log.try_iter().collect();
        // Every step from the long prompt's arrival to its first token carried a decode of
        // each running stream, while it ran (on a slow machine the adaptive budget may spread
        // the prefill over more steps than a stream's 2000 tokens).
        let last = steps.last().copied().unwrap_or(0).min(first_token_step);
        assert!(last >= submitted_after + 6, "the stream ended before the prefill's sixth step");
        let missed: Vec<u64> = (submitted_after + 1..=last).filter(|s| !steps.contains(s)).collect();
        assert!(
            missed.is_empty(),
            "a running stream sat out {} of the {} steps of a long prefill, e.g. {:?}",
            missed.len(),
            first_token_step - submitted_after,
            &missed[..missed.len().min(10)]
        );
    }
}
