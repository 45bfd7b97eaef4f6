//! The llama decoder on tiny random-weight Llama 3 (with its RoPE scaling), Mistral and Phi-3
//! models, checked against Hugging Face `transformers` in float64
//! (`tests/reference/decoder_tiny.py` built them, converted them with llama.cpp's own
//! `convert_hf_to_gguf.py`, and wrote the reference logits at every position): F32 and Q8_0
//! files, chunked prefill, bitwise batch invariance, and each file's tokenizer.
//!
//! Each model has 4 layers, grouped-query attention (4 query heads on 2 KV heads), random norm
//! weights and ~40-token prompts. The Llama 3 model's `original_max_position_embeddings` is 16,
//! so its scaled RoPE frequencies matter in the prompts; the Phi-3 model has a sliding window of
//! 16 positions and Phi-3.5-style LongRoPE (short factors and attention factor in use below its
//! original 256 positions).

mod common;
mod gguf_writer;

// Bounds on |ours − float64 reference| per file: the value measured (2026-12, printed by the
// tests) plus about 15%. With F32 weights the error left is f32 rounding and the f16 KV cache
// (measured max 0.0010 / 0.0008 / 0.0010 for llama3 / mistral / phi3 on logits whose spread is
// about 1.2 and median top-2 gap 0.3), so no room for a wrong equation; with Q8_0 weights the
// activations are quantized to 8 bits before each matmul as llama.cpp does (measured max 0.108 /
// 0.077 / 0.077). Top-1 must match wherever the reference's gap exceeds twice the max bound:
// measured at 111 / 139 / 140 positions (F32) and 69 / 86 / 84 (Q8_0).

use common::reference::{self, Bounds, PeerBounds};
use cortexstream::gguf::Value;
use cortexstream::models::llama::LlamaConfig;
use cortexstream::models::GenerationModel;
use gguf_writer::GgufSpec;

fn llama_config(family: &str) -> LlamaConfig {
    match reference::load(family, "tiny-f32.gguf") {
        GenerationModel::Llama(model) => model.config().clone(),
        other => panic!("{family}: loaded as {:?}", other.shape()),
    }
}

/// Per family: F32 then Q8_0 bounds (see above).
const BOUNDS: [(&str, [Bounds; 2]); 3] = [
    ("llama3", [f32_bounds(0.0012, 110), q8_bounds(0.125, 66)]),
    ("mistral", [f32_bounds(0.001, 137), q8_bounds(0.09, 83)]),
    ("phi3", [f32_bounds(0.0012, 137), q8_bounds(0.1, 79)]),
];

const fn f32_bounds(max: f64, min_top1_positions: usize) -> Bounds {
    Bounds { file: "tiny-f32.gguf", mean: 0.00015, max, min_top1_positions }
}

const fn q8_bounds(max: f64, min_top1_positions: usize) -> Bounds {
    Bounds { file: "tiny-q8_0.gguf", mean: 0.015, max, min_top1_positions }
}

#[test]
fn logits_match_transformers_float64_at_every_position() {
    for (family, bounds) in &BOUNDS {
        for file_bounds in bounds {
            reference::check_logits(family, file_bounds);
        }
    }
}

/// Our logits for the first prompt of `family` are close to `scaled` (transformers with the
/// RoPE scaling the model runs) and far from `unscaled` (without it), and the two references
/// differ clearly: the scaling matters in the fixture and ours follows it.
fn check_follows_scaling(family: &str, model: &GenerationModel, scaled: &[f64], unscaled: &[f64]) {
    let vocab = model.vocab_size();
    let prompt = &reference::prompts(family)[0];
    let as_rows = |logits: &[f64]| -> Vec<(usize, Vec<f32>)> {
        (0..prompt.ids.len()).map(|p| (p, logits[p * vocab..][..vocab].iter().map(|&v| v as f32).collect())).collect()
    };
    let ours = reference::logits_in_chunks(model, &prompt.ids, 1);
    let (to_scaled, max) = reference::logit_error(&ours, scaled, vocab);
    let (to_unscaled, _) = reference::logit_error(&ours, unscaled, vocab);
    let (reference_gap, _) = reference::logit_error(&as_rows(unscaled), scaled, vocab);
    println!(
        "{family}: mean |ours - scaled| {to_scaled:.5} (max {max:.4}), |ours - unscaled| {to_unscaled:.4}, |scaled - unscaled| {reference_gap:.4}"
    );
    assert!(reference_gap > 0.05, "{family}: the scaling barely changes the reference ({reference_gap})");
    assert!(max < 0.0012, "{family}: max logit error {max} from the scaled reference");
    assert!(
        to_unscaled > 100.0 * to_scaled,
        "{family}: ours {to_scaled} from the scaled reference, {to_unscaled} from the unscaled"
    );
}

/// Llama 3's frequency factors and Phi-3's LongRoPE (short factors and attention factor), as the
/// converter wrote them, against transformers with and without them.
#[test]
fn rope_scaling_changes_the_logits_and_ours_follow_it() {
    for family in ["llama3", "phi3"] {
        let scaled = &reference::prompts(family)[0].logits;
        let unscaled = reference::read_f64(family, "reference_unscaled_logits.f64");
        check_follows_scaling(family, &reference::load(family, "tiny-f32.gguf"), scaled, &unscaled);
    }
}

/// Linear RoPE scaling, asked of the Mistral file by adding the keys llama.cpp's converter writes
/// for `rope_scaling` of type `linear` (factor 2), against transformers with that scaling and
/// the file's own unscaled reference.
#[test]
fn linear_rope_scaling_matches_transformers() {
    let mut spec = GgufSpec::tiny_fixture("mistral");
    spec.set("llama.rope.scaling.type", Value::String("linear".into()));
    spec.set("llama.rope.scaling.factor", Value::F32(2.0));
    let model = GenerationModel::load(&spec.to_gguf(), reference::pool()).expect("load");
    let scaled = reference::read_f64("mistral", "reference_linear2_logits.f64");
    check_follows_scaling("mistral", &model, &scaled, &reference::prompts("mistral")[0].logits);
}

#[test]
fn configs_read_the_family_specifics() {
    let llama3 = llama_config("llama3");
    assert_eq!((llama3.family.architecture, llama3.rope_linear_factor, llama3.sliding_window), ("llama", 1.0, None));
    let mistral = llama_config("mistral");
    assert_eq!((mistral.rope_theta, mistral.sliding_window), (1_000_000.0, None));
    let phi3 = llama_config("phi3");
    assert_eq!((phi3.family.architecture, phi3.sliding_window), ("phi3", Some(16)));
    // LongRoPE: the context capped at the original 256 positions (of 1024), and the converter's
    // attention factor sqrt(1 + ln 4 / ln 256).
    assert_eq!(phi3.context_length, 256);
    assert!((phi3.rope_attention_factor - (1.0 + 4f32.ln() / 256f32.ln()).sqrt()).abs() < 1e-6);
    for c in [&llama3, &mistral, &phi3] {
        assert_eq!((c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size), (4, 4, 2, 16, 384));
    }
}

#[test]
fn tokenizers_match_the_trained_ones() {
    for family in ["llama3", "mistral", "phi3"] {
        reference::check_tokenizer(family, true);
    }
}

#[test]
fn logits_are_bitwise_identical_alone_and_batched() {
    for family in ["llama3", "phi3"] {
        reference::check_batch_invariance(family, "tiny-q8_0.gguf");
    }
}

#[test]
fn a_step_cut_into_passes_gives_the_same_logits() {
    for family in ["llama3", "phi3"] {
        reference::check_pass_invariance(family, "tiny-q8_0.gguf");
    }
}

/// llama.cpp on the same files (`tests/fixtures/{family}/llamacpp.json`, written by
/// `tests/reference/tiny_llamacpp.py` from the peer build) agrees with us: see
/// `check_llamacpp_agreement` (log-probabilities of llama.cpp's top two tokens at every step,
/// picks wherever its gap exceeds the bound, free-running ids up to its first near tie). F32:
/// both compute in f32 with an f16 KV cache (measured worst log-probability difference 0.0014
/// / 0.0016 / 0.0007 for llama3 / mistral / phi3); Q8_0: both quantize activations to 8 bits
/// before each matmul, each its own way (0.021 / 0.021 / 0.047: Phi-3's is its runner-up token's
/// at one step, hence a bound of its own; its picks' worst is 0.029). Phi-3's prompts stay inside its 16-position window,
/// which llama.cpp ignores, and llama.cpp runs it with a context of its LongRoPE original length
/// (256), so that it uses the short factors as we do. Steps at which top-1 is compared are fixed
/// by the fixture (fewer would mean the check quietly covers less).
#[test]
fn llama_cpp_agrees_on_the_same_files() {
    let cases = [
        (
            "llama3",
            PeerBounds { file: "tiny-f32.gguf", logprob: 0.002, runner_up_logprob: None, min_steps_compared: 31 },
        ),
        (
            "llama3",
            PeerBounds { file: "tiny-q8_0.gguf", logprob: 0.04, runner_up_logprob: None, min_steps_compared: 29 },
        ),
        (
            "mistral",
            PeerBounds { file: "tiny-f32.gguf", logprob: 0.002, runner_up_logprob: None, min_steps_compared: 42 },
        ),
        (
            "mistral",
            PeerBounds { file: "tiny-q8_0.gguf", logprob: 0.04, runner_up_logprob: None, min_steps_compared: 40 },
        ),
        ("phi3", PeerBounds { file: "tiny-f32.gguf", logprob: 0.002, runner_up_logprob: None, min_steps_compared: 23 }),
        (
            "phi3",
            PeerBounds {
                file: "tiny-q8_0.gguf",
                logprob: 0.04,
                runner_up_logprob: Some(0.055),
                min_steps_compared: 19,
            },
        ),
    ];
    for (family, bounds) in &cases {
        reference::check_llamacpp_agreement(family, bounds);
    }
}

/// Through the engine (the path every front door takes), greedy requests for llama.cpp's
/// prompts, all submitted at once, give llama.cpp's greedy tokens up to the first step where its
/// top-2 gap is under `NEAR_TIE`, where two correct engines may pick differently. (Steps whose
/// probabilities llama-server withheld are compared too: their ids are still its picks.)
#[test]
fn the_engine_generates_llama_cpps_tokens() {
    use cortexstream::{Engine, EngineConfig, Prompt, Request, SamplingParams};
    /// Twice the largest log-probability difference measured between the two engines (0.029).
    const NEAR_TIE: f64 = 0.058;
    // Tokens compared per family: fixed by the fixture (fewer would mean the check quietly
    // covers less).
    const COMPARED: [(&str, &str, usize); 3] = [("llama3", "llama", 17), ("mistral", "llama", 28), ("phi3", "phi3", 9)];
    for (family, architecture, expected) in COMPARED {
        let mut config = EngineConfig::new(reference::fixture_path(family, "tiny-q8_0.gguf"));
        config.block_size = 4;
        let engine = common::AllBlocksFreeAfter(Engine::new(config).unwrap_or_else(|e| panic!("{family}: {e}")));
        assert_eq!(engine.model_info().architecture, architecture);
        let prompts = reference::llamacpp_prompts(family, "tiny-q8_0.gguf");
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let max_tokens = Some(p["generated_ids"].as_array().expect("generated_ids").len());
                let params = SamplingParams { max_tokens, ignore_eos: true, ..SamplingParams::greedy() };
                engine.submit(Request::new(Prompt::Tokens(reference::ids(&p["prompt_ids"])), params)).expect("submit")
            })
            .collect();
        let mut compared = 0;
        for (p, handle) in prompts.iter().zip(handles) {
            let ours = handle.wait().token_ids;
            let clear = reference::steps_before_near_tie(p, NEAR_TIE);
            assert_eq!(ours[..clear], reference::ids(&p["generated_ids"])[..clear], "{family}: greedy tokens differ");
            compared += clear;
        }
        println!("{family}: engine greedy tokens identical to llama.cpp's over {compared} tokens before a near tie");
        assert_eq!(compared, expected, "{family}: tokens compared");
    }
}
