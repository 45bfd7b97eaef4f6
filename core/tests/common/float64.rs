//! Holding our engine to a float64 forward on the same dequantized weights (exact arithmetic,
//! independent of our code and of llama.cpp): the fixtures written by
//! `tests/reference/gemma3_f64_fixture.py` and `tests/reference/smollm2_requant_f64.py`. Only our
//! own 8-bit activation rounding separates us from it, so the bounds are far tighter than the
//! llama.cpp comparison's. Used by `gemma3_real.rs` and `smollm2_requant.rs`.

use cortexstream::{Engine, Prompt, Request, SamplingParams};
use serde_json::Value;

use super::llamacpp::ids;

/// The float64 reference for one prompt.
pub struct Float64Reference {
    pub prompt: String,
    /// Prompt ids then the greedy ids it was teacher-forced on.
    pub ids: Vec<u32>,
    pub prompt_len: usize,
    /// Float64 top-5 `(id, logprob)` after each prefix `ids[..prompt_len + i]`, best first.
    pub top: Vec<Vec<(u32, f32)>>,
}

/// The prompts of a float64 fixture (an object with `prompts`).
pub fn references(fixture: &Value) -> Vec<Float64Reference> {
    let entry = |e: &Value| (e["id"].as_u64().expect("id") as u32, e["logprob"].as_f64().expect("logprob") as f32);
    fixture["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .map(|p| Float64Reference {
            prompt: p["prompt"].as_str().expect("prompt").to_string(),
            ids: ids(&p["ids"]),
            prompt_len: p["prompt_len"].as_u64().expect("prompt_len") as usize,
            top: p["top"]
                .as_array()
                .expect("top")
                .iter()
                .map(|row| row.as_array().expect("a top row").iter().map(entry).collect())
                .collect(),
        })
        .collect()
}

/// How far our log-probabilities of one prompt's float64 top-5 ids are from float64's.
pub struct Float64Errors {
    pub mean: f32,
    pub max: f32,
    /// Where the max is, for messages.
    pub worst: String,
    pub positions: usize,
    pub summary: String,
}

/// Teacher-forced on the reference's ids (all positions as one batch: batch invariance makes
/// that the same as one at a time): every float64 top-5 id is among our top 20, and wherever
/// float64's top two are further apart than `clear_gap` our pick is its pick. Returns the
/// errors, summarised (and printed) before any bound is checked, so a failure says how far
/// off the whole prompt is.
pub fn errors(engine: &Engine, r: &Float64Reference, clear_gap: f32) -> Float64Errors {
    // 20 alternatives so float64's top 5 are all among ours even where the order shifts.
    let one_token = SamplingParams { max_tokens: Some(1), logprobs: Some(20), ..SamplingParams::greedy() };
    let handles: Vec<_> = (0..r.top.len())
        .map(|i| {
            let prefix = r.ids[..r.prompt_len + i].to_vec();
            engine.submit(Request::new(Prompt::Tokens(prefix), one_token.clone())).unwrap()
        })
        .collect();
    let mut errors = Vec::new();
    let mut worst = (0.0f32, String::new());
    for (i, (handle, exact)) in handles.into_iter().zip(&r.top).enumerate() {
        let ours = handle.wait();
        let step = &ours.logprobs[0];
        for &(id, exact_logprob) in exact {
            let our_logprob = step.top.iter().find(|t| t.token_id == id).map(|t| t.logprob).unwrap_or_else(|| {
                panic!("{:?} position {i}: float64's token {id} is not in our top 20 {:?}", r.prompt, step.top)
            });
            let error = (our_logprob - exact_logprob).abs();
            if error > worst.0 {
                worst = (error, format!("position {i}, token {id}: {our_logprob} here, {exact_logprob} in float64"));
            }
            errors.push(error);
        }
        let (best, best_logprob) = exact[0];
        if best_logprob - exact[1].1 > clear_gap {
            assert_eq!(ours.token_ids[0], best, "{:?} position {i}: a clear float64 pick differs", r.prompt);
        }
    }
    let mean = errors.iter().sum::<f32>() / errors.len() as f32;
    let (max, worst) = worst;
    let summary = format!(
        "{:?}: |ours - float64| over {} logprobs: mean {mean:.4}, max {max:.4} ({worst})",
        r.prompt,
        errors.len()
    );
    eprintln!("{summary}");
    Float64Errors { mean, max, worst, positions: r.top.len(), summary }
}
