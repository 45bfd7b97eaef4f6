//! Checking a tiny random-weight model against Hugging Face `transformers` in float64: the
//! fixtures under `tests/fixtures/{family}/` (`tiny-f32.gguf`, `tiny-q8_0.gguf`, converted by
//! llama.cpp's own `convert_hf_to_gguf.py`; `reference.json` and `reference_logits.f64`, the
//! reference logits at every position of several prompts), written by
//! `tests/reference/gemma3_tiny.py` and `tests/reference/decoder_tiny.py`.

use std::path::PathBuf;
use std::sync::Arc;

use cortexstream::gguf::GgufFile;
use cortexstream::kv_cache::KvStorage;
use cortexstream::models::{GenerationModel, SeqChunk};
use cortexstream::threadpool::ThreadPool;
use cortexstream::tokenizer::Tokenizer;

pub const BLOCK_SIZE: usize = 4;

/// A file of the fixture directory `family`.
pub fn fixture(family: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(family).join(name)
}

pub fn open(family: &str, file: &str) -> GgufFile {
    GgufFile::open(fixture(family, file)).unwrap_or_else(|e| panic!("open {family}/{file}: {e}"))
}

pub fn pool() -> Arc<ThreadPool> {
    Arc::new(ThreadPool::new(2).expect("start the thread pool"))
}

pub fn load(family: &str, file: &str) -> GenerationModel {
    GenerationModel::load(&open(family, file), pool()).unwrap_or_else(|e| panic!("load {family}/{file}: {e}"))
}

pub struct Prompt {
    pub text: String,
    pub ids: Vec<u32>,
    /// Reference logits, `ids.len()` rows of the vocabulary.
    pub logits: Vec<f64>,
}

/// Float64 little-endian values of a fixture file.
pub fn read_f64(family: &str, name: &str) -> Vec<f64> {
    let bytes = std::fs::read(fixture(family, name)).unwrap_or_else(|e| panic!("{family}/{name}: {e}"));
    bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).collect()
}

pub fn prompts(family: &str) -> Vec<Prompt> {
    let path = fixture(family, "reference.json");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("reference.json")).expect("valid JSON");
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

/// Runs `tokens` alone through `model` in chunks of `chunk_size` (blocks scattered), returning
/// the logits of the last position of each chunk (chunks of 1 give every position's logits).
pub fn logits_in_chunks(model: &GenerationModel, tokens: &[u32], chunk_size: usize) -> Vec<(usize, Vec<f32>)> {
    let blocks = tokens.len().div_ceil(BLOCK_SIZE);
    let mut kv = model.new_kv_storage(blocks * 3, BLOCK_SIZE);
    // Blocks scattered (every third, from 1), as a real allocator hands them out.
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

/// Bounds on |ours − float64 reference| for one file (each test says what it measured).
pub struct Bounds {
    pub file: &'static str,
    pub mean: f64,
    /// Over the whole vocabulary at every position.
    pub max: f64,
    /// Positions (over all prompts) where the reference's top-2 gap exceeds `2 * max`, so that
    /// top-1 must match. Fixed by the reference and the bound; fewer would mean the check
    /// quietly covers less.
    pub min_top1_positions: usize,
}

/// Mean and max |ours − reference| over every logit of `ours` (rows of `vocab`).
pub fn logit_error(ours: &[(usize, Vec<f32>)], reference: &[f64], vocab: usize) -> (f64, f64) {
    let (mut max, mut sum, mut count) = (0f64, 0f64, 0usize);
    for (position, row) in ours {
        for (&o, &r) in row.iter().zip(&reference[position * vocab..][..vocab]) {
            let error = (o as f64 - r).abs();
            max = max.max(error);
            sum += error;
            count += 1;
        }
    }
    (sum / count as f64, max)
}

/// Our logits at every position of every prompt of `family` against the reference, within
/// `bounds`, for each file; whole-prompt and 5-token chunks give the same bits as one token at
/// a time.
pub fn check_logits_against_reference(family: &str, all_bounds: &[Bounds]) {
    let prompts = prompts(family);
    for bounds in all_bounds {
        let model = load(family, bounds.file);
        let vocab = model.vocab_size();
        let (mut max, mut sum, mut top1_checked) = (0f64, 0f64, 0usize);
        for (p, prompt) in prompts.iter().enumerate() {
            assert_eq!(prompt.logits.len(), prompt.ids.len() * vocab, "{family} prompt {p}: reference shape");
            let per_token = logits_in_chunks(&model, &prompt.ids, 1);
            for chunk_size in [prompt.ids.len(), 5] {
                for (position, logits) in logits_in_chunks(&model, &prompt.ids, chunk_size) {
                    assert!(
                        logits == per_token[position].1,
                        "{family}/{}: chunk size {chunk_size} changed position {position}",
                        bounds.file
                    );
                }
            }
            let (mean, prompt_max) = logit_error(&per_token, &prompt.logits, vocab);
            sum += mean * per_token.len() as f64;
            max = max.max(prompt_max);
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
        let positions: usize = prompts.iter().map(|p| p.ids.len()).sum();
        let mean = sum / positions as f64;
        println!(
            "{family}/{}: |logit error| vs transformers float64: mean {mean:.4}, max {max:.4}; top-1 compared (and identical) at the {top1_checked} of {positions} positions with a clear reference gap",
            bounds.file
        );
        assert!(mean <= bounds.mean, "{family}/{}: mean logit error {mean} exceeds {}", bounds.file, bounds.mean);
        assert!(max <= bounds.max, "{family}/{}: max logit error {max} exceeds {}", bounds.file, bounds.max);
        assert!(
            top1_checked >= bounds.min_top1_positions,
            "{family}/{}: top-1 checked at {top1_checked} positions, expected at least {}",
            bounds.file,
            bounds.min_top1_positions
        );
    }
}

/// The file's tokenizer encodes every prompt (BOS added) to the reference's ids.
pub fn check_tokenizer_against_reference(family: &str) {
    let tokenizer = Tokenizer::from_gguf(&open(family, "tiny-f32.gguf")).expect("tokenizer");
    for prompt in prompts(family) {
        assert_eq!(tokenizer.encode(&prompt.text, true).expect("encode"), prompt.ids, "{family}: {:?}", prompt.text);
    }
}

struct Sequence {
    tokens: Vec<u32>,
    table: Vec<u32>,
    computed: usize,
    recorded: Vec<Vec<f32>>,
}

/// Runs `prompts` together: `schedule[step][i]` tokens of sequence `i` per step (0 = idle), then
/// `decode_steps` steps of one token each. A sequence whose tokens are all computed greedy-extends
/// and records its logits; returns each sequence's recorded logits.
pub fn run_batched(
    model: &GenerationModel,
    prompts: &[Vec<u32>],
    schedule: &[Vec<usize>],
    decode_steps: usize,
) -> Vec<Vec<Vec<f32>>> {
    let max_len = prompts.iter().map(Vec::len).max().unwrap_or(0) + decode_steps;
    let blocks_each = max_len.div_ceil(BLOCK_SIZE);
    let count = prompts.len();
    let mut kv: KvStorage = model.new_kv_storage(count * blocks_each, BLOCK_SIZE);
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
        model.forward(&chunks, &mut kv, &mut logits).expect("forward");
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

/// The first prompt of `family` gives bit-identical logits for 12 greedy steps alone and
/// batched with the other two (itself prefilled in two chunks while they prefill and decode).
pub fn check_batch_invariance(family: &str, file: &str) {
    let model = load(family, file);
    let p = prompts(family);
    let first = p[0].ids.clone();
    let alone = run_batched(&model, std::slice::from_ref(&first), &[vec![first.len()]], 12);
    let batch = vec![first.clone(), p[1].ids.clone(), p[2].ids.clone()];
    let split = first.len() - 9;
    let schedule = [vec![split, 4, p[2].ids.len()], vec![9, p[1].ids.len() - 4, 1], vec![0, 1, 1]];
    let batched = run_batched(&model, &batch, &schedule, 12);
    assert_eq!(alone[0].len(), 13);
    assert_eq!(batched[0].len(), 13);
    for (step, (a, b)) in alone[0].iter().zip(&batched[0]).enumerate() {
        assert!(a == b, "{family}/{file} step {step}: logits differ between alone and batched");
    }
}
