//! The engine's token counters add up: every prompt token of a request is counted once as a
//! prefix-cache hit or once as prefill, whatever happened to the request (a repeated prompt,
//! `n` identical choices, a cached prompt that had to wait a step, a preemption), and what a
//! preemption makes the engine compute again is counted apart, as recomputation.
//! Run with `--test-threads=1` (model tests share the machine).

mod common;

use common::greedy;

use common::AllBlocksFreeAfter;

use cortexstream::{Completion, Engine, EngineConfig, MetricsSnapshot, Request};

/// An engine whose steps compute at most `max_prefill_tokens` prompt tokens (a fixed budget,
/// so which prompts share a step does not depend on timing) in a cache of `kv_cache_tokens`.
fn engine(max_prefill_tokens: usize, kv_cache_tokens: usize) -> AllBlocksFreeAfter<Engine> {
    let mut config = EngineConfig::new(common::smollm2_path());
    config.max_prefill_tokens = max_prefill_tokens;
    config.kv_cache_tokens = kv_cache_tokens;
    fixed_budget_engine(config)
}

fn fixed_budget_engine(mut config: EngineConfig) -> AllBlocksFreeAfter<Engine> {
    config.target_step_ms = None;
    AllBlocksFreeAfter(Engine::new(config).expect("SmolLM2 loads"))
}

/// How the counters moved over one batch of requests.
#[derive(Debug)]
struct Moved {
    prompt: u64,
    prefill: u64,
    hits: u64,
    recomputed: u64,
    preemptions: u64,
}

/// Submits `requests` back to back (so they queue together), waits for all of them, and
/// checks the counters against their usage: prompt tokens are the requests' prompt tokens,
/// hits are their cached prompt tokens, and hits + prefill = prompt tokens.
fn run_and_check(engine: &Engine, what: &str, requests: Vec<Request>) -> Moved {
    let before = engine.metrics();
    let handles: Vec<_> = requests.into_iter().map(|r| engine.submit(r).expect("accepted")).collect();
    let done: Vec<Completion> = handles.into_iter().map(|h| h.wait()).collect();
    let moved = moved(&before, &engine.metrics());
    let prompt_tokens: usize = done.iter().map(|c| c.usage.prompt_tokens).sum();
    let cached_tokens: usize = done.iter().map(|c| c.usage.cached_prompt_tokens).sum();
    assert_eq!(moved.prompt, prompt_tokens as u64, "{what}: prompt_tokens_total {moved:?}");
    assert_eq!(moved.hits, cached_tokens as u64, "{what}: hits vs the requests' cached tokens {moved:?}");
    assert_eq!(moved.hits + moved.prefill, moved.prompt, "{what}: hits + prefill != prompt tokens {moved:?}");
    moved
}

fn moved(before: &MetricsSnapshot, after: &MetricsSnapshot) -> Moved {
    Moved {
        prompt: after.prompt_tokens_total - before.prompt_tokens_total,
        prefill: after.prefill_tokens_total - before.prefill_tokens_total,
        hits: after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens,
        recomputed: after.recomputed_tokens_total - before.recomputed_tokens_total,
        preemptions: after.preemptions - before.preemptions,
    }
}

#[test]
fn hits_plus_prefill_equal_prompt_tokens_across_repeats_choices_and_waits() {
    let engine = engine(64, 4096);
    let system = "You are a meticulous assistant who answers briefly. ".repeat(12);

    let plain = run_and_check(&engine, "plain", vec![Request::new("The quick brown fox", greedy(8))]);
    assert_eq!((plain.hits, plain.prefill), (0, 4), "{plain:?}");

    let first = run_and_check(&engine, "first of a long prompt", vec![Request::new(system.as_str(), greedy(4))]);
    let repeated = run_and_check(&engine, "repeated prompt", vec![Request::new(system.as_str(), greedy(4))]);
    assert!(repeated.hits >= first.prompt - 16, "the repeat was not served from the cache: {repeated:?}");

    // n = 2: the same new prompt twice at once (the REST server fans `n` out like this).
    let question = format!("{system} Name three rivers of Europe.");
    let choices = vec![Request::new(question.as_str(), greedy(6)), Request::new(question.as_str(), greedy(6))];
    run_and_check(&engine, "n = 2", choices);

    // A long prompt keeps the engine busy while a short one and a cached one with a long new
    // tail queue behind it. When they are admitted, the cached one does not fit beside the
    // short one and waits a step, offered its cached prefix twice: its hits count once.
    let long = "one two three four five six seven eight nine ten ".repeat(60);
    let tail = "Then list every planet with its moons, one per line, in order. ".repeat(8);
    let waits = vec![
        Request::new(long.as_str(), greedy(2)),
        Request::new("Hello there", greedy(2)),
        Request::new(format!("{system}{tail}").as_str(), greedy(2)),
    ];
    let waited = run_and_check(&engine, "a cached prompt that waits a step", waits);
    assert!(waited.hits >= 96, "the cached prompt was not served from the cache: {waited:?}");
    assert_eq!(waited.recomputed + plain.recomputed + repeated.recomputed, 0, "nothing was preempted");
}

#[test]
fn recomputation_after_preemption_is_counted_apart_from_prefill() {
    // 16 blocks of 16 tokens: four sequences of ~90 tokens need ~24, so some are preempted and
    // compute their tokens again when they resume.
    let engine = engine(2048, 256);
    let prompts: Vec<String> = (0..4).map(|i| format!("Story {i}: the dragon and the knight")).collect();
    let requests = prompts.iter().map(|p| Request::new(p.as_str(), greedy(80))).collect();
    let moved = run_and_check(&engine, "preempted and resumed", requests);
    assert!(moved.preemptions > 0, "the cache was large enough: {moved:?}");
    assert!(moved.recomputed > 0, "a resumed sequence computed nothing again: {moved:?}");
}

#[test]
fn the_step_token_budget_gauge_is_the_last_steps_decodes_plus_its_granted_prompt_tokens() {
    // The last step of a lone request is one decode; beside it a fixed budget grants
    // `max_batch_tokens - 1` prompt tokens, capped by `max_prefill_tokens`.
    let capped_by_prefill = engine(64, 4096);
    capped_by_prefill.generate(Request::new("The quick brown fox", greedy(4))).unwrap();
    assert_eq!(capped_by_prefill.metrics().step_token_budget, 1 + 64);

    let mut config = EngineConfig::new(common::smollm2_path());
    config.max_batch_tokens = 100;
    let capped_by_batch = fixed_budget_engine(config);
    capped_by_batch.generate(Request::new("The quick brown fox", greedy(4))).unwrap();
    assert_eq!(capped_by_batch.metrics().step_token_budget, 100);
}
