//! The Gemma 3 forward on a tiny random-weight model, checked against Hugging Face
//! `transformers` in float64 (`tests/reference/gemma3_tiny.py` built the model, converted it
//! with llama.cpp's own `convert_hf_to_gguf.py`, and wrote the reference logits at every
//! position): F32 and Q8_0 files, chunked prefill, and bitwise batch invariance.
//!
//! The model has 6 layers (0-4 sliding with a window of 8 positions, 5 global), distinct RoPE
//! bases for the two kinds, random norm weights, and ~40-token prompts, so a wrong window, a
//! swapped RoPE base, a missing norm or a wrong activation each move the logits far past the
//! bounds below.

mod common;

use common::reference::{
    check_batch_invariance, check_batch_invariance_as, check_llamacpp_agreement, check_logits, check_logits_as,
    check_pass_invariance, check_tokenizer, load, Bounds, PeerBounds,
};
use cortexstream::kv_cache::KvCacheType;
use cortexstream::models::GenerationModel;

/// Bounds on |ours − float64 reference| per file: the measured value (2026-12, printed by the
/// test) plus a margin of about 10%. The reference runs the float32 weights the converter read.
/// With F32 weights our matmuls are f32 × f32: the error left is f32 rounding and the f16 KV
/// cache, so a bound this tight leaves no room for a wrong equation. With Q8_0 weights the
/// activations are quantized to 8 bits before each matmul (as llama.cpp does) and the weights
/// carry their own 8-bit rounding; the logits' spread is about 4.2 (standard deviation over the
/// vocabulary) and the top-2 gap about 10, so the error is about 1% of the spread.
/// Measured mean: 0.0005 (F32), 0.0569 (Q8_0); max: 0.0039 (F32), 0.366 (Q8_0); top-1
/// checked at 127 of 127 positions in both.
const BOUNDS: [Bounds; 2] = [
    Bounds { file: "tiny-q8_0.gguf", mean: 0.063, max: 0.40, min_top1_positions: 125 },
    Bounds { file: "tiny-f32.gguf", mean: 0.0007, max: 0.0045, min_top1_positions: 125 },
];

#[test]
fn logits_match_transformers_float64_at_every_position() {
    for bounds in &BOUNDS {
        check_logits("gemma3", bounds);
    }
}

#[test]
fn config_reads_the_sliding_pattern_and_rope_bases() {
    let GenerationModel::Gemma3(model) = load("gemma3", "tiny-f32.gguf") else { panic!("loads as Gemma 3") };
    let c = model.config();
    assert_eq!(c.sliding_window, Some(8));
    assert_eq!(c.sliding_layers, vec![true, true, true, true, true, false]);
    assert_eq!((c.rope_theta, c.rope_theta_swa), (1_000_000.0, 10_000.0));
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size), (4, 2, 16, 384));
}

#[test]
fn sentencepiece_tokenizer_matches_the_trained_model() {
    check_tokenizer("gemma3", true);
}

/// The first prompt prefilled in two chunks while the others prefill and decode beside it, then
/// all decode together past the sliding window: bit-identical to running it alone.
#[test]
fn logits_are_bitwise_identical_alone_and_batched() {
    check_batch_invariance("gemma3", "tiny-q8_0.gguf");
}

/// llama.cpp (the peer, `tests/fixtures/gemma3/llamacpp.json`, written by
/// `tests/reference/tiny_llamacpp.py`) on the same converted files, 3 prompts x 16 greedy steps
/// each, running past the 8-position sliding window. F32: both compute in f32 with an f16 KV
/// cache (measured worst log-probability difference 0.0033); Q8_0: each quantizes activations
/// to 8 bits its own way (0.150). Top-1 compared at all 48 steps of both.
#[test]
fn greedy_and_log_probabilities_match_llama_cpp() {
    let cases = [
        PeerBounds { file: "tiny-f32.gguf", logprob: 0.005, runner_up_logprob: None, min_steps_compared: 48 },
        PeerBounds { file: "tiny-q8_0.gguf", logprob: 0.18, runner_up_logprob: None, min_steps_compared: 48 },
    ];
    for bounds in &cases {
        check_llamacpp_agreement("gemma3", bounds);
    }
}

/// The q8_0 KV cache on the F32 file (so the error measured is the cache's: 8-bit K and V, and
/// 8-bit queries in Q·K), against the same float64 reference. Bounds: the measured value
/// (2026-12, printed by the test) plus about 10%. Measured: mean 0.0141, max 0.115, top-1 checked at 127 positions (the f16 cache: 0.0005, 0.0039).
#[test]
fn q8_cache_logits_match_transformers_float64_at_every_position() {
    check_logits_as(
        "gemma3",
        &Bounds { file: "tiny-f32.gguf", mean: 0.016, max: 0.13, min_top1_positions: 127 },
        KvCacheType::Q8_0,
    );
}

/// Batch invariance holds with the q8_0 KV cache too (every row is quantized on its own).
#[test]
fn logits_are_bitwise_identical_alone_and_batched_with_a_q8_cache() {
    check_batch_invariance_as("gemma3", "tiny-q8_0.gguf", KvCacheType::Q8_0);
}

#[test]
fn a_step_cut_into_passes_gives_the_same_logits() {
    check_pass_invariance("gemma3", "tiny-q8_0.gguf");
}
