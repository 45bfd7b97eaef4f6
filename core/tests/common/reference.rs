//! Checking a generation model against committed reference logits: the tiny random-weight
//! models that `tests/reference/*_tiny.py` build with Hugging Face `transformers`, convert
//! with llama.cpp's `convert_hf_to_gguf.py`, and run in float64 at every position of several
//! prompts. Each fixture directory `tests/fixtures/{family}/` holds `tiny-f32.gguf`,
//! `tiny-q8_0.gguf`, `reference.json` (per prompt: text, ids, vocab) and
//! `reference_logits.f64` (every prompt's logits at every position, little-endian, row-major),
//! some also `reference_{variant}_logits.f64` (the first prompt under other RoPE parameters,
//! [`read_f64`]) and `llamacpp.json` (llama.cpp on the same files, written by
//! `tests/reference/tiny_llamacpp.py`; see [`check_llamacpp_agreement`]).

use std::path::PathBuf;
use std::sync::Arc;

use cortexstream::gguf::GgufFile;
use cortexstream::kv_cache::KvCacheType;
use cortexstream::models::{GenerationModel, SeqChunk};
use cortexstream::threadpool::ThreadPool;
use cortexstream::tokenizer::Tokenizer;

/// KV block size of every check: small, so prompts span many scattered blocks.
const BLOCK_SIZE: usize = 4;

/// `tests/fixtures/{family}/{name}`.
pub fn fixture_path(family: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(family).join(name)
}

pub fn open(family: &str, file: &str) -> GgufFile {
    GgufFile::open(fixture_path(family, file)).unwrap_or_else(|e| panic!("open {family}/{file}: {e}"))
}

pub fn pool() -> Arc<ThreadPool> {
    Arc::new(ThreadPool::new(2).expect("start the thread pool"))
}

pub fn load(family: &str, file: &str) -> GenerationModel {
    GenerationModel::load(&open(family, file), pool()).unwrap_or_else(|e| panic!("load {family}/{file}: {e}"))
}

/// Float64 little-endian values of a fixture file.
pub fn read_f64(family: &str, name: &str) -> Vec<f64> {
    let bytes = std::fs::read(fixture_path(family, name)).unwrap_or_else(|e| panic!("{family}/{name}: {e}"));
    bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).collect()
}

pub struct Prompt {
    pub text: String,
    pub ids: Vec<u32>,
    /// Reference logits, `ids.len()` rows of `vocab`.
    pub logits: Vec<f64>,
}

/// The fixture's prompts with their reference logits.
pub fn prompts(family: &str) -> Vec<Prompt> {
    let json = std::fs::read_to_string(fixture_path(family, "reference.json")).expect("reference.json");
    let meta: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let all = read_f64(family, "reference_logits.f64");
    let mut offset = 0;
    let prompts: Vec<Prompt> = meta["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .map(|p| {
            let ids: Vec<u32> =
                p["ids"].as_array().expect("ids").iter().map(|v| v.as_u64().expect("id") as u32).collect();
            let len = ids.len() * p["vocab"].as_u64().expect("vocab") as usize;
            let logits = all[offset..offset + len].to_vec();
            offset += len;
            Prompt { text: p["text"].as_str().expect("text").to_string(), ids, logits }
        })
        .collect();
    assert_eq!(offset, all.len(), "{family}: reference logits and reference.json disagree on the shape");
    prompts
}

/// Runs `tokens` alone through `model` in chunks of `chunk_size` (blocks scattered, as a real
/// allocator hands them out), returning the logits of each chunk's last position.
pub fn logits_in_chunks(model: &GenerationModel, tokens: &[u32], chunk_size: usize) -> Vec<(usize, Vec<f32>)> {
    logits_in_chunks_as(model, tokens, chunk_size, KvCacheType::F16)
}

/// [`logits_in_chunks`] with the KV cache stored as `cache_type`.
pub fn logits_in_chunks_as(
    model: &GenerationModel,
    tokens: &[u32],
    chunk_size: usize,
    cache_type: KvCacheType,
) -> Vec<(usize, Vec<f32>)> {
    let blocks = tokens.len().div_ceil(BLOCK_SIZE);
    let mut kv = model.new_kv_storage(blocks * 3, BLOCK_SIZE).with_cache_type(cache_type);
    let table: Vec<u32> = (0..blocks as u32).map(|b| b * 3 + 1).collect();
    let mut out = Vec::new();
    let mut logits = Vec::new();
    let mut start = 0;
    while start < tokens.len() {
        let len = chunk_size.min(tokens.len() - start);
        let chunk = SeqChunk {
            tokens: &tokens[start..start + len],
            start_pos: start,
            block_table: &table,
            sliding_block_table: &[],
            want_logits: true,
        };
        model.forward(&[chunk], &mut kv, &mut logits).expect("forward");
        start += len;
        out.push((start - 1, logits.clone()));
    }
    out
}

pub fn argmax<T: PartialOrd + Copy>(values: &[T]) -> usize {
    (0..values.len()).fold(0, |best, i| if values[i] > values[best] { i } else { best })
}

/// Bounds on |ours − float64 reference| for one file (see each test for the measured values).
pub struct Bounds {
    pub file: &'static str,
    /// Mean over the whole vocabulary at every position.
    pub mean: f64,
    /// Max over the whole vocabulary at every position.
    pub max: f64,
    /// Positions (over all prompts) where the reference's top-2 gap exceeds `2 * max`, so that
    /// top-1 must match. Fixed by the reference and the bound; fewer would mean the check
    /// quietly covers less.
    pub min_top1_positions: usize,
}

/// Sum and max of |ours − reference| over every logit of `ours` (rows of `vocab`, at the
/// positions given), and how many logits that was.
fn error_sum_and_max(ours: &[(usize, Vec<f32>)], reference: &[f64], vocab: usize) -> (f64, f64, usize) {
    let (mut sum, mut max, mut count) = (0f64, 0f64, 0usize);
    for (position, row) in ours {
        for (&o, &r) in row.iter().zip(&reference[position * vocab..][..vocab]) {
            let error = (o as f64 - r).abs();
            max = max.max(error);
            sum += error;
            count += 1;
        }
    }
    (sum, max, count)
}

/// Mean and max |ours − reference| over every logit of `ours` (rows of `vocab`).
pub fn logit_error(ours: &[(usize, Vec<f32>)], reference: &[f64], vocab: usize) -> (f64, f64) {
    let (sum, max, count) = error_sum_and_max(ours, reference, vocab);
    (sum / count as f64, max)
}

/// What [`check_logits`] measured.
#[derive(Debug)]
pub struct Measured {
    pub mean: f64,
    pub max: f64,
    pub top1_checked: usize,
}

/// Checks `bounds.file` of `family` against the reference at every position of every prompt:
/// whole-prompt and 5-token chunked prefill give the bits of one-token steps, the error is
/// within the bounds, and top-1 agrees wherever the reference's gap is clear.
pub fn check_logits(family: &str, bounds: &Bounds) -> Measured {
    check_logits_as(family, bounds, KvCacheType::F16)
}

/// [`check_logits`] with the KV cache stored as `cache_type`.
pub fn check_logits_as(family: &str, bounds: &Bounds, cache_type: KvCacheType) -> Measured {
    let model = load(family, bounds.file);
    let vocab = model.vocab_size();
    let (mut max, mut sum, mut count, mut top1_checked) = (0f64, 0f64, 0usize, 0usize);
    for (p, prompt) in prompts(family).iter().enumerate() {
        assert_eq!(prompt.logits.len(), prompt.ids.len() * vocab, "{family} prompt {p}: reference shape");
        let per_token = logits_in_chunks_as(&model, &prompt.ids, 1, cache_type);
        for chunk_size in [prompt.ids.len(), 5] {
            for (position, logits) in logits_in_chunks_as(&model, &prompt.ids, chunk_size, cache_type) {
                assert!(
                    logits == per_token[position].1,
                    "{family}/{}: chunk size {chunk_size} changed position {position}",
                    bounds.file
                );
            }
        }
        let (prompt_sum, prompt_max, prompt_count) = error_sum_and_max(&per_token, &prompt.logits, vocab);
        sum += prompt_sum;
        max = max.max(prompt_max);
        count += prompt_count;
        for (position, ours) in &per_token {
            let reference = &prompt.logits[position * vocab..][..vocab];
            let mut ranked: Vec<usize> = (0..vocab).collect();
            ranked.sort_by(|&a, &b| reference[b].total_cmp(&reference[a]));
            if reference[ranked[0]] - reference[ranked[1]] > 2.0 * bounds.max {
                assert_eq!(
                    argmax(ours),
                    ranked[0],
                    "{family}/{} prompt {p} position {position}: top-1 differs",
                    bounds.file
                );
                top1_checked += 1;
            }
        }
    }
    let measured = Measured { mean: sum / count as f64, max, top1_checked };
    println!("{family}/{} ({cache_type} KV): |logit error| vs transformers float64: {measured:?}", bounds.file);
    let within = |what: &str, value: f64, bound: f64| {
        assert!(value <= bound, "{family}/{}: {what} logit error {value} exceeds {bound}", bounds.file);
    };
    within("mean", measured.mean, bounds.mean);
    within("max", measured.max, bounds.max);
    assert!(
        top1_checked >= bounds.min_top1_positions,
        "{family}/{}: top-1 checked at {top1_checked} positions, expected at least {}",
        bounds.file,
        bounds.min_top1_positions
    );
    measured
}

/// The GGUF's own tokenizer gives the reference's ids for every prompt (with BOS when `add_bos`).
pub fn check_tokenizer(family: &str, add_bos: bool) {
    let tokenizer = Tokenizer::from_gguf(&open(family, "tiny-f32.gguf")).expect("tokenizer");
    for prompt in prompts(family) {
        assert_eq!(tokenizer.encode(&prompt.text, add_bos).expect("encode"), prompt.ids, "{family}: {:?}", prompt.text);
    }
}

struct Sequence {
    tokens: Vec<u32>,
    table: Vec<u32>,
    computed: usize,
    recorded: Vec<Vec<f32>>,
}

/// Runs `prompts` together: step `s` feeds `schedule[s][i]` tokens of sequence `i` (0 = idle),
/// then `decode_steps` steps of one token each. A sequence that reaches the end of its tokens
/// greedy-extends and records its logits. Returns each sequence's recorded logits.
pub fn run_schedule(
    model: &GenerationModel,
    prompts: &[Vec<u32>],
    schedule: &[Vec<usize>],
    decode_steps: usize,
    cache_type: KvCacheType,
) -> Vec<Vec<Vec<f32>>> {
    run_schedule_in_passes(model, prompts, schedule, decode_steps, cache_type, usize::MAX)
}

/// [`run_schedule`] with every step's forward cut into passes of at most `max_rows` rows.
pub fn run_schedule_in_passes(
    model: &GenerationModel,
    prompts: &[Vec<u32>],
    schedule: &[Vec<usize>],
    decode_steps: usize,
    cache_type: KvCacheType,
    max_rows: usize,
) -> Vec<Vec<Vec<f32>>> {
    let max_len = prompts.iter().map(Vec::len).max().unwrap_or(0) + decode_steps;
    let blocks_each = max_len.div_ceil(BLOCK_SIZE);
    let count = prompts.len();
    let mut kv = model.new_kv_storage(count * blocks_each, BLOCK_SIZE).with_cache_type(cache_type);
    let mut seqs: Vec<Sequence> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Sequence {
            tokens: p.clone(),
            table: (0..blocks_each).map(|b| (b * count + i) as u32).collect(),
            computed: 0,
            recorded: Vec::new(),
        })
        .collect();
    let vocab = model.vocab_size();
    let mut logits = Vec::new();
    let decode = vec![vec![1; count]; decode_steps];
    for lens in schedule.iter().chain(&decode) {
        let active: Vec<usize> = (0..count).filter(|&i| lens[i] > 0).collect();
        let chunks: Vec<SeqChunk<'_>> = active
            .iter()
            .map(|&i| {
                let s = &seqs[i];
                SeqChunk {
                    tokens: &s.tokens[s.computed..s.computed + lens[i]],
                    start_pos: s.computed,
                    block_table: &s.table,
                    sliding_block_table: &[],
                    want_logits: s.computed + lens[i] == s.tokens.len(),
                }
            })
            .collect();
        let wanting: Vec<usize> =
            active.iter().copied().zip(&chunks).filter(|(_, c)| c.want_logits).map(|(i, _)| i).collect();
        model.forward_in_passes(&chunks, &mut kv, &mut logits, max_rows).expect("forward");
        for &i in &active {
            seqs[i].computed += lens[i];
        }
        for (row, &i) in wanting.iter().enumerate() {
            let row_logits = logits[row * vocab..][..vocab].to_vec();
            seqs[i].tokens.push(argmax(&row_logits) as u32);
            seqs[i].recorded.push(row_logits);
        }
    }
    seqs.into_iter().map(|s| s.recorded).collect()
}

/// The first prompt's logits are bitwise the same alone and batched with the fixture's other
/// prompts (three or more): prefilled in two chunks while the others prefill and decode beside
/// it, then all decoding together for 12 steps.
pub fn check_batch_invariance(family: &str, file: &str) {
    check_batch_invariance_as(family, file, KvCacheType::F16)
}

/// [`check_batch_invariance`] with the KV cache stored as `cache_type`.
pub fn check_batch_invariance_as(family: &str, file: &str, cache_type: KvCacheType) {
    let model = load(family, file);
    let p = prompts(family);
    let first = p[0].ids.clone();
    let alone = run_schedule(&model, std::slice::from_ref(&first), &[vec![first.len()]], 12, cache_type);
    let batch = vec![first.clone(), p[1].ids.clone(), p[2].ids.clone()];
    let split = first.len() - 9;
    let schedule = [vec![split, 4, p[2].ids.len()], vec![9, p[1].ids.len() - 4, 1], vec![0, 1, 1]];
    let batched = run_schedule(&model, &batch, &schedule, 12, cache_type);
    assert_eq!(alone[0].len(), 13);
    assert_eq!(batched[0].len(), 13);
    for (step, (a, b)) in alone[0].iter().zip(&batched[0]).enumerate() {
        assert!(a == b, "{family}/{file} ({cache_type} KV) step {step}: logits differ between alone and batched");
    }
}

/// A step's forward cut into passes of a few rows (as steps of more than
/// `micro_batch::MAX_ROWS` rows are) gives the same logits bit for bit as one pass: three
/// prompts prefilled in one step, then decoded together.
pub fn check_pass_invariance(family: &str, file: &str) {
    let model = load(family, file);
    let batch: Vec<Vec<u32>> = prompts(family).iter().take(3).map(|p| p.ids.clone()).collect();
    let schedule = [batch.iter().map(Vec::len).collect::<Vec<_>>()];
    let whole = run_schedule_in_passes(&model, &batch, &schedule, 4, KvCacheType::F16, usize::MAX);
    for max_rows in [1, 5, 17] {
        let cut = run_schedule_in_passes(&model, &batch, &schedule, 4, KvCacheType::F16, max_rows);
        for (seq, (a, b)) in whole.iter().zip(&cut).enumerate() {
            assert!(a == b, "{family}/{file}: sequence {seq}'s logits differ in passes of {max_rows} rows");
        }
    }
}

/// `log_softmax(logits)[id]`, in f64.
fn log_probability(logits: &[f32], id: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits[id] as f64 - max - sum.ln()
}

/// llama.cpp's prompts on `file` of `tests/fixtures/{family}/llamacpp.json` (written by
/// `tests/reference/tiny_llamacpp.py`): per prompt `prompt_ids`, `generated_ids` (its greedy
/// ids) and `steps` (per generated id, `top`: its top-2 ids and log-probabilities, or `null`
/// where llama-server withheld them).
pub fn llamacpp_prompts(family: &str, file: &str) -> Vec<serde_json::Value> {
    let json = std::fs::read_to_string(fixture_path(family, "llamacpp.json")).expect("llamacpp.json");
    let fixture: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    fixture["files"][file]["prompts"].as_array().unwrap_or_else(|| panic!("{family}: no prompts for {file}")).clone()
}

/// A JSON array of token ids.
pub fn ids(value: &serde_json::Value) -> Vec<u32> {
    value.as_array().expect("ids").iter().map(|i| i.as_u64().expect("id") as u32).collect()
}

/// Steps of llama.cpp's greedy run on `prompt` (an entry of [`llamacpp_prompts`]) before its
/// first near tie, a step whose top-2 gap is under `tie`, where two correct engines may pick
/// differently. Steps whose probabilities llama-server withheld count as clear: their ids are
/// still its picks.
pub fn steps_before_near_tie(prompt: &serde_json::Value, tie: f64) -> usize {
    let steps = prompt["steps"].as_array().expect("steps");
    let gap = |top: &serde_json::Value| {
        top[0]["logprob"].as_f64().expect("logprob") - top[1]["logprob"].as_f64().expect("logprob")
    };
    steps.iter().take_while(|s| s["top"].is_null() || gap(&s["top"]) >= tie).count()
}

/// How closely our forward must follow llama.cpp on one file of `tests/fixtures/{family}/llamacpp.json`
/// (written by `tests/reference/tiny_llamacpp.py`).
pub struct PeerBounds {
    pub file: &'static str,
    /// Largest |our log-probability − llama.cpp's| of its top two tokens at a step; a step
    /// whose top-2 gap is under this is a near tie, where the two may pick differently.
    pub logprob: f64,
    /// A looser bound for its second token alone, where one is needed (`None`: `logprob`).
    pub runner_up_logprob: Option<f64>,
    /// Steps (over all prompts) at which top-1 was compared teacher-forced; fewer would mean
    /// the check quietly covers less.
    pub min_steps_compared: usize,
}

/// Holds our forward to llama.cpp's on the same converted file: teacher-forced on llama.cpp's
/// tokens, our log-probabilities of its top two tokens are within `bounds.logprob` of its own
/// and our pick is its pick wherever its gap is clear; free-running, our greedy ids are its ids
/// up to its first near tie.
pub fn check_llamacpp_agreement(family: &str, bounds: &PeerBounds) {
    let model = load(family, bounds.file);
    let (mut compared, mut worst) = (0usize, 0f64);
    for (p, prompt) in llamacpp_prompts(family, bounds.file).iter().enumerate() {
        let prompt_ids = ids(&prompt["prompt_ids"]);
        let theirs = ids(&prompt["generated_ids"]);
        let tokens: Vec<u32> = prompt_ids.iter().chain(&theirs).copied().collect();
        let forced = logits_in_chunks(&model, &tokens, 1);
        let mut first_near_tie = theirs.len();
        for (step, expected) in prompt["steps"].as_array().expect("steps").iter().enumerate() {
            let Some(top) = expected["top"].as_array() else { continue };
            let ours = &forced[prompt_ids.len() - 1 + step].1;
            let logprob = |t: &serde_json::Value| t["logprob"].as_f64().expect("logprob");
            for (rank, t) in top.iter().enumerate() {
                let error = (log_probability(ours, t["id"].as_u64().expect("id") as usize) - logprob(t)).abs();
                worst = worst.max(error);
                let bound = if rank == 0 { bounds.logprob } else { bounds.runner_up_logprob.unwrap_or(bounds.logprob) };
                assert!(
                    error <= bound,
                    "{family}/{} prompt {p} step {step}: log-probability of its rank-{rank} token off by {error}",
                    bounds.file
                );
            }
            if logprob(&top[0]) - logprob(&top[1]) > bounds.logprob {
                assert_eq!(
                    argmax(ours) as u32,
                    theirs[step],
                    "{family}/{} prompt {p} step {step}: pick differs",
                    bounds.file
                );
                compared += 1;
            } else {
                first_near_tie = first_near_tie.min(step);
            }
        }
        let free = run_schedule(
            &model,
            std::slice::from_ref(&prompt_ids),
            &[vec![prompt_ids.len()]],
            theirs.len() - 1,
            KvCacheType::F16,
        );
        let ours: Vec<u32> = free[0].iter().map(|logits| argmax(logits) as u32).collect();
        assert_eq!(
            ours[..first_near_tie],
            theirs[..first_near_tie],
            "{family}/{} prompt {p}: greedy ids differ",
            bounds.file
        );
    }
    println!("{family}/{}: top-1 compared at {compared} steps; worst log-probability error {worst:.4}", bounds.file);
    assert!(compared >= bounds.min_steps_compared, "{family}/{}: compared {compared} steps", bounds.file);
}
