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

use common::tiny_reference::{self as reference, Bounds};
use cortexstream::gguf::{GgufFile, Value};
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
        reference::check_logits_against_reference(family, bounds);
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
    let mut spec = GgufSpec::from_f32_file(&reference::fixture("mistral", "tiny-f32.gguf"));
    spec.set("llama.rope.scaling.type", Value::String("linear".into()));
    spec.set("llama.rope.scaling.factor", Value::F32(2.0));
    let gguf = GgufFile::from_bytes("mistral-linear2.gguf", spec.to_bytes()).expect("a readable GGUF");
    let model = GenerationModel::load(&gguf, reference::pool()).expect("load");
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
        reference::check_tokenizer_against_reference(family);
    }
}

#[test]
fn logits_are_bitwise_identical_alone_and_batched() {
    for family in ["llama3", "phi3"] {
        reference::check_batch_invariance(family, "tiny-q8_0.gguf");
    }
}

/// Log-softmax of one row of logits, in f64.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_sum = logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
    logits.iter().map(|&l| l as f64 - max - log_sum).collect()
}

/// llama.cpp on the same Q8_0 files (`tests/fixtures/{family}/llamacpp.json`, written by
/// `tests/reference/tiny_llamacpp.py` from the peer build) agrees with us, teacher-forced on its
/// greedy ids: at every generated position where llama-server reported them, our
/// log-probability of its pick is within `LOGPROB_TOLERANCE` of its own, and wherever its top-2
/// gap exceeds twice that, our pick is its pick. (Both quantize activations to 8 bits before each
/// matmul, each its own way, so the two differ by more than float rounding; random models have
/// flat distributions, so free-running greedy outputs may part at near ties and are not
/// compared.) Phi-3's prompts stay inside its 16-position window, which llama.cpp ignores, and
/// llama.cpp runs it with a context of its LongRoPE original length (256), so that it uses the
/// short factors as we do.
#[test]
fn llama_cpp_agrees_on_the_same_files() {
    // Measured: 0.021 (llama3), 0.019 (mistral), 0.029 (phi3).
    const LOGPROB_TOLERANCE: f64 = 0.04;
    // Steps with llama.cpp's probabilities, per family (fixed by the fixture; fewer would mean
    // the check quietly covers less).
    const COMPARED: [(&str, usize); 3] = [("llama3", 31), ("mistral", 42), ("phi3", 23)];
    for (family, expected_steps) in COMPARED {
        let model = reference::load(family, "tiny-q8_0.gguf");
        let fixture = common::fixture(&format!("{family}/llamacpp.json"));
        let (mut worst, mut compared, mut picks_checked) = (0f64, 0usize, 0usize);
        for prompt in fixture["prompts"].as_array().expect("prompts") {
            let ids = |key: &str| -> Vec<u32> {
                prompt[key].as_array().expect(key).iter().map(|v| v.as_u64().expect("id") as u32).collect()
            };
            let (prompt_ids, generated) = (ids("prompt_ids"), ids("generated_ids"));
            let tokens: Vec<u32> = prompt_ids.iter().chain(&generated).copied().collect();
            let ours = reference::logits_in_chunks(&model, &tokens, 1);
            for (i, step) in prompt["steps"].as_array().expect("steps").iter().enumerate() {
                if step.is_null() {
                    continue; // llama-server withheld this step's probabilities
                }
                let logprobs = log_softmax(&ours[prompt_ids.len() - 1 + i].1);
                let pick = step["id"].as_u64().expect("id") as usize;
                assert_eq!(pick, generated[i] as usize, "{family} step {i}: fixture out of line");
                worst = worst.max((logprobs[pick] - step["logprob"].as_f64().expect("logprob")).abs());
                compared += 1;
                let top: Vec<f64> = step["top"]
                    .as_array()
                    .expect("top")
                    .iter()
                    .map(|t| t["logprob"].as_f64().expect("logprob"))
                    .collect();
                if top[0] - top[1] > 2.0 * LOGPROB_TOLERANCE {
                    assert_eq!(reference::argmax(&logprobs), pick, "{family} step {i}: greedy pick differs");
                    picks_checked += 1;
                }
            }
        }
        println!(
            "{family}: |logprob ours - llama.cpp| max {worst:.4} over {compared} steps; picks compared at {picks_checked}"
        );
        assert!(worst <= LOGPROB_TOLERANCE, "{family}: log-probabilities differ by {worst}");
        assert_eq!(compared, expected_steps, "{family}: steps compared");
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
        let mut config = EngineConfig::new(reference::fixture(family, "tiny-q8_0.gguf"));
        config.block_size = 4;
        let engine = Engine::new(config).unwrap_or_else(|e| panic!("{family}: {e}"));
        assert_eq!(engine.model_info().architecture, architecture);
        let fixture = common::fixture(&format!("{family}/llamacpp.json"));
        let prompts = fixture["prompts"].as_array().expect("prompts");
        let ids = |p: &serde_json::Value, key: &str| -> Vec<u32> {
            p[key].as_array().expect(key).iter().map(|v| v.as_u64().expect("id") as u32).collect()
        };
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let max_tokens = Some(ids(p, "generated_ids").len());
                let params = SamplingParams { max_tokens, ignore_eos: true, ..SamplingParams::greedy() };
                engine.submit(Request::new(Prompt::Tokens(ids(p, "prompt_ids")), params)).expect("submit")
            })
            .collect();
        let mut compared = 0;
        for (p, handle) in prompts.iter().zip(handles) {
            let ours = handle.wait().token_ids;
            let clear = p["steps"]
                .as_array()
                .expect("steps")
                .iter()
                .take_while(|s| {
                    s.is_null()
                        || s["top"][0]["logprob"]
                            .as_f64()
                            .zip(s["top"][1]["logprob"].as_f64())
                            .is_some_and(|(a, b)| a - b >= NEAR_TIE)
                })
                .count();
            assert_eq!(ours[..clear], ids(p, "generated_ids")[..clear], "{family}: greedy tokens differ");
            compared += clear;
        }
        println!("{family}: engine greedy tokens identical to llama.cpp's over {compared} tokens before a near tie");
        assert_eq!(compared, expected, "{family}: tokens compared");
    }
}
