//! The engine with an 8-bit KV cache (`kv_cache_type = q8_0`) on the real SmolLM2 model: batch
//! invariance among 29 other requests, the prefix cache and preemption with 8-bit blocks, and
//! the memory the cache is accounted for.
//! Run with `--test-threads=1`.

mod common;

use common::greedy;

use std::sync::OnceLock;

use common::AllBlocksFreeAfter;

use cortexstream::{ChatMessage, Engine, EngineConfig, Error, FinishReason, KvCacheType, Prompt, Request};

fn q8_config() -> EngineConfig {
    let mut config = EngineConfig::new(common::smollm2_path());
    config.kv_cache_type = KvCacheType::Q8_0;
    config
}

/// The shared engine: a fixed token budget, so how much a step batches does not depend on
/// how loaded the machine is (the adaptive budget sizes prompt chunks from step times).
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = q8_config();
        config.target_step_ms = None;
        Engine::new(config).expect("the model loads with a q8_0 cache")
    })
}

#[test]
fn batch_invariance_alone_and_among_29_others() {
    let engine = AllBlocksFreeAfter(engine());
    let prompts = ["The quick brown fox", "Once upon a time, in a small village,", "The capital of France is"];
    let alone: Vec<Vec<u32>> =
        prompts.iter().map(|p| engine.generate(Request::new(*p, greedy(16))).unwrap().token_ids).collect();
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
    // They were batched: this phase's steps carried 8+ tokens on average.
    let after = engine.metrics();
    let steps = after.steps - before.steps;
    let batched_tokens = after.batch_size.sum - before.batch_size.sum;
    assert!(batched_tokens >= 8.0 * steps as f64, "{batched_tokens} tokens in {steps} steps: not batched");
    let generated = after.generated_tokens_total - before.generated_tokens_total;
    assert!(steps * 4 <= generated, "{generated} tokens in {steps} steps: not batched");
}

#[test]
fn a_prompt_served_from_cached_q8_blocks_continues_as_one_computed_afresh() {
    let system = "You are a meticulous assistant. ".repeat(20);
    let chat = |question: &str| {
        Prompt::Chat(vec![ChatMessage::new("system", system.clone()), ChatMessage::new("user", question)])
    };
    // A fresh engine computes the whole prompt.
    let fresh = AllBlocksFreeAfter(Engine::new(q8_config()).unwrap());
    let computed = fresh.generate(Request::new(chat("Name a colour."), greedy(12))).unwrap();
    assert_eq!(computed.usage.cached_prompt_tokens, 0);
    // The shared engine has the system prompt's blocks cached by another question first.
    let engine = AllBlocksFreeAfter(engine());
    engine.generate(Request::new(chat("What is two plus two?"), greedy(2))).unwrap();
    let reused = engine.generate(Request::new(chat("Name a colour."), greedy(12))).unwrap();
    assert!(
        reused.usage.cached_prompt_tokens >= 96,
        "only {} tokens from the cache",
        reused.usage.cached_prompt_tokens
    );
    assert_eq!(reused.token_ids, computed.token_ids);
}

#[test]
fn preempted_sequences_resume_and_lose_nothing() {
    // 16 blocks of 16 tokens: four sequences of ~90 tokens need ~24, so some are preempted
    // and later recomputed. Their output must equal the unconstrained engine's.
    let mut config = q8_config();
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
}

#[test]
fn the_q8_cache_is_accounted_at_its_own_size() {
    // SmolLM2-135M: 30 layers, 3 KV heads of 64. Per token and layer, K and V of each head:
    // 2 × 128 bytes as f16, 2 × (64 + 2 × 2) as q8_0.
    let tokens = 4096;
    let memory = |cache_type: KvCacheType| {
        let mut config = EngineConfig::new(common::smollm2_path());
        config.kv_cache_tokens = tokens;
        config.kv_cache_type = cache_type;
        Engine::new(config).unwrap().memory_bytes()
    };
    let saved = memory(KvCacheType::F16) - memory(KvCacheType::Q8_0);
    assert_eq!(saved, (tokens * 30 * 3 * 2 * (128 - 68)) as u64);
}

#[test]
fn an_unknown_cache_type_is_refused_naming_the_field() {
    let error = "q4".parse::<KvCacheType>().unwrap_err();
    assert!(matches!(error, Error::InvalidRequest { param: "kv_cache_type", .. }), "{error}");
}
