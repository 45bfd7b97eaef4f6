//! The real Gemma 3 270M Q4_K_M file (`python3 python/cortexstream/models.py pull all`): it
//! loads, greedy requests are batch-invariant, and the KV pool is clean afterwards.
//!
//! One engine for the whole binary (run with `--test-threads=1`, like every model test).

mod common;

use std::sync::OnceLock;

use common::AllBlocksFreeAfter;
use cortexstream::{Completion, Engine, EngineConfig, FinishReason, Request, SamplingParams};

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = EngineConfig::new(common::gemma3_path());
        // 270M with one 256-wide KV head over 18 layers: a small pool is plenty for these
        // prompts and keeps the test's memory modest on CI.
        config.kv_cache_tokens = 4096;
        let engine = Engine::new(config).expect("the real Gemma 3 file loads");
        assert_eq!(engine.model_info().architecture, "gemma3");
        engine
    })
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams { max_tokens: Some(max_tokens), logprobs: Some(2), ..SamplingParams::greedy() }
}

#[test]
fn the_file_loads_as_gemma3_with_its_vocabulary() {
    let info = engine().model_info();
    assert_eq!(info.vocab_size, 262_144, "{info:?}");
}

fn ids_and_logprobs(c: Completion) -> (Vec<u32>, Vec<cortexstream::TokenLogprobs>) {
    assert_eq!(c.logprobs.len(), c.token_ids.len());
    (c.token_ids, c.logprobs)
}

#[test]
fn greedy_is_the_same_alone_and_beside_eight_others() {
    let engine = AllBlocksFreeAfter(engine());
    let prompt = "The capital of France is";
    let alone = ids_and_logprobs(engine.generate(Request::new(prompt, greedy(16))).unwrap());

    let before = engine.metrics();
    let others: Vec<_> = (0..8)
        .map(|i| {
            let other = format!("Item {i}: a list of {} things to pack for a trip", i * 3 + 2);
            let params = SamplingParams { ignore_eos: true, ..greedy(4 + i) };
            engine.submit(Request::new(other, params)).unwrap()
        })
        .collect();
    let beside = engine.submit(Request::new(prompt, greedy(16))).unwrap();
    let beside = ids_and_logprobs(beside.wait());
    for other in others {
        assert_eq!(other.wait().finish_reason, FinishReason::Length);
    }
    // They really shared steps: on average more than two sampled tokens per step.
    let after = engine.metrics();
    let (steps, generated) = (after.steps - before.steps, after.generated_tokens_total - before.generated_tokens_total);
    assert!(steps * 2 <= generated, "{generated} tokens in {steps} steps: not batched");
    assert_eq!(alone.0, beside.0, "token ids differ alone and beside others");
    let first_difference = alone.1.iter().zip(&beside.1).position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "logprobs differ alone and beside others (at that token)");
}
