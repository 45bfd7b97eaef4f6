//! Holding our engine to llama.cpp's greedy output on the same file: the fixtures written by
//! `tests/reference/llamacpp_server.py` (via `gemma3_llamacpp.py`, `smollm2_requant_llamacpp.py`).
//! Used by `gemma3_real.rs` and `smollm2_requant.rs`.

use cortexstream::{Completion, Engine, FinishReason, Prompt, Request, SamplingParams, TokenLogprobs};
use serde_json::Value;

/// llama.cpp's reference for one raw prompt (see `llamacpp_server.py` for the fields).
pub struct Reference {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    /// llama.cpp's top `(id, logprob)`, best first, at each generated position (two or
    /// more, as many as the fixture recorded).
    pub top: Vec<Vec<(u32, f32)>>,
    pub near_tie_at: Option<usize>,
    /// The gap under which llama.cpp's top two count as a near tie (see the generator).
    pub near_tie: f32,
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("an id array").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

fn top(step: &Value) -> Vec<(u32, f32)> {
    let top = step["top"].as_array().expect("top");
    assert!(top.len() >= 2, "a step records llama.cpp's top two at least: {step}");
    top.iter().map(|t| (t["id"].as_u64().expect("id") as u32, t["logprob"].as_f64().expect("logprob") as f32)).collect()
}

/// The prompts of one llama.cpp reference: an object with `near_tie` and `prompts`.
pub fn references(reference: &Value) -> Vec<Reference> {
    let near_tie = reference["near_tie"].as_f64().expect("near_tie") as f32;
    reference["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .map(|p| Reference {
            prompt: p["prompt"].as_str().expect("prompt").to_string(),
            prompt_ids: ids(&p["prompt_ids"]),
            generated_ids: ids(&p["generated_ids"]),
            top: p["steps"].as_array().expect("steps").iter().map(top).collect(),
            near_tie_at: p["near_tie_at"].as_u64().map(|i| i as usize),
            near_tie,
        })
        .collect()
}

pub fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams { max_tokens: Some(max_tokens), logprobs: Some(2), ..SamplingParams::greedy() }
}

/// Our prompt ids equal llama.cpp's, for the prompts and for `tokenize` (`[{text, ids}]`).
pub fn assert_tokenization_matches(engine: &Engine, references: &[Reference], tokenize: &Value) {
    for r in references {
        let ours = engine.tokenize(&r.prompt, true).unwrap();
        assert_eq!(ours, r.prompt_ids, "{:?}: our prompt ids differ from llama.cpp's", r.prompt);
    }
    for t in tokenize.as_array().expect("tokenize") {
        let text = t["text"].as_str().expect("text");
        assert_eq!(engine.tokenize(text, true).unwrap(), ids(&t["ids"]), "{text:?}: our ids differ from llama.cpp's");
    }
}

/// Free-running greedy ids equal llama.cpp's until its first near tie; at the tie, our pick is
/// one of the tokens llama.cpp has within the near-tie gap of its best (its top two, or more
/// when the fixture recorded more and they are that close too).
pub fn assert_greedy_matches_until_near_tie(engine: &Engine, references: &[Reference]) {
    for r in references {
        let ours = engine.generate(Request::new(r.prompt.as_str(), greedy(r.generated_ids.len()))).unwrap();
        let agreed = r.near_tie_at.unwrap_or(r.generated_ids.len());
        assert!(
            ours.token_ids.len() >= agreed,
            "{:?}: we stopped after {} tokens ({:?}), llama.cpp went on to {}",
            r.prompt,
            ours.token_ids.len(),
            ours.finish_reason,
            r.generated_ids.len()
        );
        assert_eq!(
            ours.token_ids[..agreed],
            r.generated_ids[..agreed],
            "{:?}: greedy ids differ from llama.cpp's before its first near-tie (at {:?}); ours: {:?}",
            r.prompt,
            r.near_tie_at,
            ours.text
        );
        if let (Some(at), Some(&pick)) = (r.near_tie_at, ours.token_ids.get(agreed)) {
            let best = r.top[at][0].1;
            let tied = r.top[at].iter().any(|&(id, logprob)| id == pick && best - logprob < r.near_tie);
            assert!(tied, "{:?}: at the near tie {at} we picked {pick}; llama.cpp's top: {:?}", r.prompt, r.top[at]);
        }
    }
}

/// Teacher-forced on llama.cpp's greedy ids, so positions past where free runs part are
/// compared too: at each of the first `positions`, our log-probability of llama.cpp's token is
/// within `tolerance` of llama.cpp's, and where llama.cpp's top two are not a near tie we pick
/// its token. (All positions of a prompt run as one batch: batch invariance makes that the
/// same as one at a time.) Returns the largest difference seen.
pub fn assert_teacher_forced_logprobs_match(
    engine: &Engine,
    references: &[Reference],
    positions: usize,
    tolerance: f32,
) -> f32 {
    let one_token = SamplingParams { max_tokens: Some(1), logprobs: Some(5), ..SamplingParams::greedy() };
    let mut largest = 0.0f32;
    for r in references {
        let handles: Vec<_> = (0..r.generated_ids.len().min(positions))
            .map(|i| {
                let prefix = [&r.prompt_ids[..], &r.generated_ids[..i]].concat();
                engine.submit(Request::new(Prompt::Tokens(prefix), one_token.clone())).unwrap()
            })
            .collect();
        for (i, handle) in handles.into_iter().enumerate() {
            let ours = handle.wait();
            let [(theirs, their_logprob), (_, their_second)] = [r.top[i][0], r.top[i][1]];
            let step = &ours.logprobs[0];
            let our_logprob = step.top.iter().find(|t| t.token_id == theirs).map(|t| t.logprob);
            let our_logprob = our_logprob.unwrap_or_else(|| {
                panic!("{:?} position {i}: llama.cpp's token {theirs} is not in our top 5 {:?}", r.prompt, step.top)
            });
            largest = largest.max((our_logprob - their_logprob).abs());
            assert!(
                (our_logprob - their_logprob).abs() <= tolerance,
                "{:?} position {i}: token {theirs} has logprob {our_logprob} here, {their_logprob} in llama.cpp",
                r.prompt
            );
            if their_logprob - their_second >= r.near_tie {
                assert_eq!(
                    ours.token_ids[0], theirs,
                    "{:?} position {i}: a clear pick of llama.cpp's differs",
                    r.prompt
                );
            }
        }
    }
    largest
}

fn ids_and_logprobs(c: Completion) -> (Vec<u32>, Vec<TokenLogprobs>) {
    assert_eq!(c.logprobs.len(), c.token_ids.len());
    (c.token_ids, c.logprobs)
}

/// `prompt`'s 16 greedy tokens and their log-probabilities are the same alone and in steps
/// shared with eight other sequences (which really share them: checked from the metrics).
pub fn assert_greedy_same_alone_and_beside_eight_others(engine: &Engine, prompt: &str) {
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
