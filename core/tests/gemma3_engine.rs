//! The engine on the tiny Gemma 3 fixture (`tests/reference/gemma3_tiny.py`): the
//! architecture dispatch loads it, and greedy requests give the same tokens alone and batched
//! with others, through prefill and decode past the 8-position sliding window.

mod common;

use common::greedy;

use std::path::PathBuf;

use cortexstream::{Engine, EngineConfig, FinishReason, Request, SamplingParams};

fn tiny_gemma3() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gemma3/tiny-q8_0.gguf")
}

/// Greedy with the top-5 log-probabilities of every step: the tiny model's top-2 gaps are wide,
/// so token ids alone would hide a small batch-dependent change; the logprobs must be equal
/// bit for bit.
fn greedy_with_logprobs(max_tokens: usize) -> SamplingParams {
    SamplingParams { logprobs: Some(5), ..greedy(max_tokens) }
}

fn tokens_and_logprobs(c: cortexstream::Completion) -> (Vec<u32>, Vec<cortexstream::TokenLogprobs>) {
    assert_eq!(c.logprobs.len(), c.token_ids.len());
    (c.token_ids, c.logprobs)
}

#[test]
fn greedy_tokens_are_the_same_alone_and_among_others() {
    let mut config = EngineConfig::new(tiny_gemma3());
    // Small blocks so that sequences span many scattered blocks.
    config.block_size = 4;
    let engine = Engine::new(config).expect("the tiny gemma3 loads");
    assert_eq!(engine.model_info().architecture, "gemma3");
    let prompts = ["The quick brown fox", "def add(a, b):\n    return a + b", "global layers keep them all"];
    let alone: Vec<_> = prompts
        .iter()
        .map(|p| tokens_and_logprobs(engine.generate(Request::new(*p, greedy_with_logprobs(24))).unwrap()))
        .collect();

    let before = engine.metrics();
    let fillers: Vec<_> = (0..12)
        .map(|i| {
            let prompt = format!("window {i} sliding the fox near warm fire {}", i * 7);
            engine.submit(Request::new(prompt, greedy(6 + i % 9))).unwrap()
        })
        .collect();
    let batched: Vec<_> =
        prompts.iter().map(|p| engine.submit(Request::new(*p, greedy_with_logprobs(24))).unwrap()).collect();
    let batched: Vec<_> = batched.into_iter().map(|h| tokens_and_logprobs(h.wait())).collect();
    for f in fillers {
        assert_eq!(f.wait().finish_reason, FinishReason::Length);
    }
    for (prompt, (a, b)) in prompts.iter().zip(alone.iter().zip(&batched)) {
        assert_eq!(a.0, b.0, "{prompt:?}: token ids differ alone and batched");
        let first_difference = a.1.iter().zip(&b.1).position(|(a, b)| a != b);
        assert_eq!(first_difference, None, "{prompt:?}: logprobs differ alone and batched (at that token)");
    }
    // They really shared steps: on average more than 4 sampled tokens per step of this phase.
    let after = engine.metrics();
    let steps = after.steps - before.steps;
    let generated = after.generated_tokens_total - before.generated_tokens_total;
    assert!(steps * 4 <= generated, "{generated} tokens in {steps} steps: not batched");
    common::wait_idle(&engine);
    let m = engine.metrics();
    assert_eq!(m.kv_blocks_free, m.kv_blocks_total, "every block is back");
    // The sliding layers' pool: 32 running sequences × (window 8 in blocks of 4, + 2 blocks),
    // plus one step's 2048 prompt tokens, well under the 16384 / 4 global blocks.
    assert_eq!((m.kv_blocks_total, m.kv_sliding_blocks_total), (16384 / 4, 32 * (8 / 4 + 2) + 2048 / 4));
    assert_eq!(m.kv_sliding_blocks_free, m.kv_sliding_blocks_total, "every sliding block is back");
}

#[test]
fn chat_without_a_template_is_refused_while_text_completes() {
    let engine = Engine::new(EngineConfig::new(tiny_gemma3())).expect("load");
    let chat = cortexstream::Prompt::Chat(vec![cortexstream::ChatMessage::new("user", "hi")]);
    let err = engine.generate(Request::new(chat, greedy(2))).expect_err("chat needs a template");
    assert_eq!(err.code(), "chat_template_missing", "{err}");
    assert_eq!(engine.generate(Request::new("fox", greedy(3))).unwrap().token_ids.len(), 3);
}
