//! The real Gemma 3 270M Q4_K_M file (`python3 python/cortexstream/models.py pull all`), held
//! to llama.cpp's output on the same file (`tests/fixtures/gemma3_llamacpp.json`, written by
//! `tests/reference/gemma3_llamacpp.py` from the peer build): token ids of prompts and varied
//! strings, and greedy ids until llama.cpp's own top two are a near-tie. Held far more tightly
//! to a float64 forward on the same dequantized weights (`tests/fixtures/gemma3_f64.json`,
//! written by `tests/reference/gemma3_f64_fixture.py`). Plus batch invariance and a clean KV pool.
//!
//! One engine for the whole binary (run with `--test-threads=1`, like every model test).

mod common;

use std::sync::OnceLock;

use common::float64;
use common::llamacpp::{self, Reference};
use common::AllBlocksFreeAfter;
use cortexstream::{Engine, EngineConfig};

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = EngineConfig::new(common::gemma3_path());
        // 270M with one 256-wide KV head over 18 layers: a small pool is plenty for these
        // prompts and keeps the test's memory modest on CI.
        config.kv_cache_tokens = 4096;
        // A fixed step budget: the batching check counts steps, and an adaptive budget measured on
        // a loaded machine would shrink the prompt chunks and spread the streams over more steps.
        config.target_step_ms = None;
        let engine = Engine::new(config).expect("the real Gemma 3 file loads");
        assert_eq!(engine.model_info().architecture, "gemma3");
        engine
    })
}

fn references() -> Vec<Reference> {
    llamacpp::references(&common::fixture("gemma3_llamacpp.json"))
}

#[test]
fn the_file_loads_as_gemma3_with_its_vocabulary() {
    let info = engine().model_info();
    assert_eq!(info.vocab_size, 262_144, "{info:?}");
}

#[test]
fn prompt_tokens_equal_llama_cpp() {
    let tokenize = &common::fixture("gemma3_llamacpp.json")["tokenize"];
    llamacpp::assert_tokenization_matches(engine(), &references(), tokenize);
}

#[test]
fn greedy_ids_equal_llama_cpp_until_its_top_two_near_tie() {
    llamacpp::assert_greedy_matches_until_near_tie(&AllBlocksFreeAfter(engine()), &references());
}

/// How far our log-probability of llama.cpp's token may be from llama.cpp's own: both engines
/// quantize activations to 8 bits, each its own way (measured: up to 0.31; see the generator).
const LOGPROB_TOLERANCE: f32 = 0.4;

/// Positions compared per prompt teacher-forced (each is one prefill: kept modest for CI).
const TEACHER_FORCED_POSITIONS: usize = 16;

/// Teacher-forced on llama.cpp's greedy ids (`llamacpp::assert_teacher_forced_logprobs_match`):
/// at each of the first [`TEACHER_FORCED_POSITIONS`], our log-probability of llama.cpp's token
/// is within [`LOGPROB_TOLERANCE`] of llama.cpp's, and clear picks are its picks.
#[test]
fn next_token_logprobs_follow_llama_cpp_at_every_position() {
    let engine = AllBlocksFreeAfter(engine());
    llamacpp::assert_teacher_forced_logprobs_match(&engine, &references(), TEACHER_FORCED_POSITIONS, LOGPROB_TOLERANCE);
}

#[test]
fn greedy_is_the_same_alone_and_beside_eight_others() {
    llamacpp::assert_greedy_same_alone_and_beside_eight_others(
        &AllBlocksFreeAfter(engine()),
        "The capital of France is",
    );
}

/// Plain greedy rows take the head's fused argmax (the 262,144-row Q8_0 head reduced tile by
/// tile, never written); greedy rows with log-probabilities take the written logits. Twenty
/// prompts, each submitted both ways at once: 40 logit rows per step (the 16+-row pair kernel)
/// mixing both kinds, and every plain row picks the token its logit twin picks.
#[test]
fn greedy_from_the_fused_head_equals_greedy_from_the_logits_in_mixed_steps() {
    use cortexstream::{Request, SamplingParams};
    let engine = AllBlocksFreeAfter(engine());
    let plain = SamplingParams { max_tokens: Some(10), ..SamplingParams::greedy() };
    let with_logits = SamplingParams { logprobs: Some(1), ..plain.clone() };
    let topics = ["the sea", "a red fox", "prime numbers", "Rust code", "the moon", "tea", "a violin", "rain"];
    let prompts: Vec<String> = (0..20).map(|i| format!("Note {i} about {}:", topics[i % topics.len()])).collect();
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let submit = |params: &SamplingParams| engine.submit(Request::new(p.as_str(), params.clone())).unwrap();
            (submit(&plain), submit(&with_logits))
        })
        .collect();
    for (i, (fused, logit_row)) in handles.into_iter().enumerate() {
        let (fused, logit_row) = (fused.wait(), logit_row.wait());
        assert_eq!(fused.token_ids.len(), 10, "prompt {i}");
        assert_eq!(fused.token_ids, logit_row.token_ids, "prompt {i}: {:?}", prompts[i]);
        assert_eq!(logit_row.logprobs.len(), 10, "prompt {i}: the logit row got its logits");
    }
}

/// Per prompt of the fixture (in its order), bounds on `|our logprob - float64 logprob|` over
/// the float64 top-5 ids of its positions: `(mean, max)`, each what we measured plus about 15%
/// (measured with Q5_0 computed as llama.cpp does, its bias taken off the integer block dot
/// exactly: mean 0.052 0.084 0.058 0.066 0.087 0.052; max 0.249 0.567 0.247 0.399 0.333 0.230.
/// Before it, with the tiled attention: mean 0.045 0.108 0.060 0.078 0.102 0.048; max 0.178
/// 0.400 0.331 0.340 0.301 0.203. Before that: mean 0.049 0.089 0.065 0.076 0.086 0.047, max
/// 0.174 0.360 0.290 0.282 0.306 0.166; with a float64 attention: mean 0.051 0.083 0.056 0.082
/// 0.106 0.050, max 0.223 0.319 0.222 0.334 0.328 0.186: single roundings move them this much,
/// the means less than the maxima, which are single lower-ranked ids). Only our own 8-bit
/// activation rounding separates us from float64, so these are far
/// tighter than the llama.cpp comparison (0.4), which carries both engines' rounding; the
/// lower-ranked ids of the top 5 carry the larger errors. A model change that moves these
/// (e.g. a more exact kernel) should re-measure them, not widen them blindly.
const FLOAT64_ERROR_BOUNDS: [(f32, f32); 6] =
    [(0.06, 0.286), (0.097, 0.652), (0.067, 0.284), (0.076, 0.459), (0.1, 0.383), (0.06, 0.265)];

/// Our greedy pick must be float64's wherever float64's top two logprobs are further apart than
/// this (nats). One margin for every prompt, independent of the per-prompt maxima above: those
/// are single lower-ranked ids of the top 5, while the pick depends on the top two only.
/// Measured: 0.05 fails ("The capital of France is", position 13), 0.2 passes; it was twice each
/// prompt's max bound (0.41-1.3), far looser.
const FLOAT64_PICK_MARGIN: f32 = 0.25;

/// Positions per prompt in the fixture, times its six prompts: the test must really look.
const FLOAT64_MIN_POSITIONS: usize = 6 * 16;

/// Our log-probabilities of float64's top-5 ids, teacher-forced on the same ids, stay within
/// the prompt's [`FLOAT64_ERROR_BOUNDS`] (mean and max), and wherever float64's top two are
/// further apart than [`FLOAT64_PICK_MARGIN`] our pick is its pick.
#[test]
fn next_token_logprobs_follow_float64_closely() {
    let engine = AllBlocksFreeAfter(engine());
    let references = float64::references(&common::fixture("gemma3_f64.json"));
    assert_eq!(references.len(), FLOAT64_ERROR_BOUNDS.len(), "one pair of bounds per float64 prompt");
    let mut positions = 0;
    for (r, &(mean_bound, max_bound)) in references.iter().zip(&FLOAT64_ERROR_BOUNDS) {
        let errors = float64::errors(&engine, r, FLOAT64_PICK_MARGIN);
        assert!(errors.mean <= mean_bound, "{}: mean above {mean_bound}", errors.summary);
        assert!(errors.max <= max_bound, "{}: max above {max_bound}", errors.summary);
        positions += errors.positions;
    }
    assert!(positions >= FLOAT64_MIN_POSITIONS, "only {positions} positions checked against float64");
}
