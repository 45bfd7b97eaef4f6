//! Sliding-window KV release (issue 16 item 3): Gemma 3's sliding layers keep their K/V in a
//! pool of their own, and a sequence gives back its sliding blocks once they lie before the
//! window of every position it still computes. Nothing the model computes may change:
//! - on the forward alone, logits are bit for bit those of one pool that keeps everything,
//!   with a sliding pool of exactly the blocks the window needs, so that given-back blocks are
//!   handed out again and overwritten (tiny fixture, window 8; real 270M, window 512, with a
//!   700-token prompt and decoding past it);
//! - through the engine (real 270M), greedy tokens equal that reference, the sliding blocks
//!   in use stay within the window's worth, a prefix-cache hit longer than the window gives the
//!   same tokens, and both pools are whole again when idle.
//!
//! Run with `--test-threads=1`, like every model test.

mod common;

use common::greedy;

use std::path::PathBuf;
use std::sync::Arc;

use common::AllBlocksFreeAfter;
use cortexstream::gguf::GgufFile;
use cortexstream::kv_cache::{BlockAllocator, BlockTable, KvCacheType};
use cortexstream::models::gemma3::Gemma3Model;
use cortexstream::models::SeqChunk;
use cortexstream::threadpool::ThreadPool;
use cortexstream::{Engine, EngineConfig, Event, Prompt, Request};

fn load(path: PathBuf) -> Gemma3Model {
    let gguf = GgufFile::open(&path).expect("open the gemma3 file");
    Gemma3Model::load(&gguf, Arc::new(ThreadPool::new(2).expect("start the thread pool"))).expect("load")
}

fn argmax(values: &[f32]) -> u32 {
    (0..values.len()).fold(0, |best, i| if values[i] > values[best] { i } else { best }) as u32
}

/// How `run` keeps the sliding layers' K/V (stored as f16 unless `Q8`).
#[derive(Clone, Copy, PartialEq, Debug)]
enum SlidingKv {
    /// One pool for every layer, every position kept (sliding layers only read the window).
    KeepEverything,
    /// A sliding pool of `ceil((window + chunk) / block_size) + 1` blocks, the most one
    /// sequence may hold: blocks before the window are given back before each step.
    ReleaseBeforeWindow,
    /// Either of the above with the KV cache stored as q8_0.
    Q8(&'static SlidingKv),
}

impl SlidingKv {
    fn releases(self) -> bool {
        match self {
            SlidingKv::ReleaseBeforeWindow => true,
            SlidingKv::KeepEverything => false,
            SlidingKv::Q8(inner) => inner.releases(),
        }
    }

    fn cache_type(self) -> KvCacheType {
        if matches!(self, SlidingKv::Q8(_)) {
            KvCacheType::Q8_0
        } else {
            KvCacheType::F16
        }
    }
}

/// `prompt` in chunks of `chunk` tokens, then `decode` greedy tokens, alone: the logits of
/// every step's last position.
fn run(
    model: &Gemma3Model,
    prompt: &[u32],
    chunk: usize,
    decode: usize,
    block_size: usize,
    kv: SlidingKv,
) -> Vec<Vec<f32>> {
    let window = model.config().sliding_window.expect("the model slides");
    let total = prompt.len() + decode;
    let global_blocks = total.div_ceil(block_size);
    let sliding_blocks = (window + chunk).div_ceil(block_size) + 1;
    let mut storage = if kv.releases() {
        model.new_kv_storage_with_sliding_pool(global_blocks, sliding_blocks, block_size)
    } else {
        model.new_kv_storage(global_blocks, block_size)
    }
    .with_cache_type(kv.cache_type());
    // Global blocks in reverse, so no table is the identity.
    let global: Vec<u32> = (0..global_blocks as u32).rev().collect();
    let sliding_pool = BlockAllocator::new(sliding_blocks, block_size);
    let mut sliding = BlockTable::new();
    let mut tokens = prompt.to_vec();
    let mut computed = 0;
    let mut out = Vec::new();
    let mut logits = Vec::new();
    while computed < total {
        let len = chunk.min(tokens.len() - computed);
        let end = computed + len;
        if kv.releases() {
            sliding.release_before((computed + 1).saturating_sub(window) / block_size);
            let needed = end.div_ceil(block_size) - sliding.len();
            sliding_pool.allocate_into(&mut sliding, needed).expect("the window's blocks fit the sliding pool");
        }
        let step = SeqChunk {
            tokens: &tokens[computed..end],
            start_pos: computed,
            block_table: &global,
            sliding_block_table: &sliding,
            want_logits: true,
        };
        model.forward(&[step], &mut storage, &mut logits).expect("forward");
        computed = end;
        if computed == tokens.len() && tokens.len() < total {
            tokens.push(argmax(&logits));
        }
        out.push(logits.clone());
    }
    out
}

/// Asserts two runs gave the same bits at every step.
fn assert_bitwise_equal(kept: &[Vec<f32>], released: &[Vec<f32>], what: &str) {
    assert_eq!(kept.len(), released.len());
    let first_difference = kept.iter().zip(released).position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "{what}: logits differ at that step once sliding blocks are given back");
}

#[test]
fn tiny_gemma3_logits_are_bitwise_the_same_when_sliding_blocks_are_given_back() {
    let model = load(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gemma3/tiny-q8_0.gguf"));
    assert_eq!(model.config().sliding_window, Some(8));
    let vocab = model.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..37).map(|i| (i * 7 + 3) % vocab).collect();
    for chunk in [1, 5, 37] {
        let kept = run(&model, &prompt, chunk, 20, 4, SlidingKv::KeepEverything);
        let released = run(&model, &prompt, chunk, 20, 4, SlidingKv::ReleaseBeforeWindow);
        assert_bitwise_equal(&kept, &released, &format!("chunks of {chunk}"));
        // The same with 8-bit blocks in both pools (and the q8 logits are not the f16 ones:
        // the cache type really changed).
        let kept_q8 = run(&model, &prompt, chunk, 20, 4, SlidingKv::Q8(&SlidingKv::KeepEverything));
        let released_q8 = run(&model, &prompt, chunk, 20, 4, SlidingKv::Q8(&SlidingKv::ReleaseBeforeWindow));
        assert_bitwise_equal(&kept_q8, &released_q8, &format!("q8_0, chunks of {chunk}"));
        assert_ne!(kept_q8, kept, "chunks of {chunk}: a q8_0 cache gave the f16 logits");
    }
}

/// A prompt of exactly `len` tokens of varied text.
fn long_prompt(engine: &Engine, len: usize) -> Vec<u32> {
    let text: String = (0..len)
        .map(|i| {
            format!(
                "Item {i}: the {} fox jumps over {} lazy dogs near river {}. ",
                ["red", "quick", "old"][i % 3],
                i * 7 % 13,
                i % 5
            )
        })
        .collect();
    let mut ids = engine.tokenize(&text, true).expect("tokenize");
    assert!(ids.len() >= len, "the text is long enough");
    ids.truncate(len);
    ids
}

/// Runs `prompt` through the engine greedily, returning its tokens and the most sliding
/// blocks in use seen in the gauges while it streamed.
fn generate_watching_sliding_blocks(engine: &Engine, prompt: &[u32], max_tokens: usize) -> (Vec<u32>, usize) {
    let handle = engine.submit(Request::new(Prompt::Tokens(prompt.to_vec()), greedy(max_tokens))).expect("submit");
    let mut tokens = Vec::new();
    let mut most_in_use = 0;
    loop {
        let event = handle.recv_timeout(std::time::Duration::from_secs(600)).expect("an event before the hang guard");
        // The gauges are published after every step: whatever step this reading follows, it
        // counts the blocks the sequence held then.
        let m = engine.metrics();
        most_in_use = most_in_use.max(m.kv_sliding_blocks_total - m.kv_sliding_blocks_free);
        match event {
            Event::Token { id, .. } => tokens.push(id),
            Event::Finished { .. } => return (tokens, most_in_use),
        }
    }
}

#[test]
fn real_gemma3_long_prompt_gives_the_same_tokens_holding_only_the_window() {
    const PROMPT: usize = 700;
    const DECODE: usize = 24;
    const BLOCK: usize = 16;
    const CHUNK: usize = 64;
    let mut config = EngineConfig::new(common::gemma3_path());
    config.kv_cache_tokens = 2048;
    config.max_prefill_tokens = CHUNK;
    // Fixed 64-token chunks, as the reference run computes them and the bounds below assume
    // (an adaptive budget sizes them by time). With 1-token chunks the tokens are the same but
    // the second run's prefix hit was 0 of 688 tokens: the window's sliding blocks had been
    // evicted (noticed with issue 21, left to the sliding KV's owner).
    config.target_step_ms = None;
    let engine = AllBlocksFreeAfter(Engine::new(config).expect("load"));
    let prompt = long_prompt(&engine, PROMPT);

    let model = load(common::gemma3_path());
    let window = model.config().sliding_window.expect("the 270M slides");
    assert_eq!(window, 512);
    assert!(PROMPT > window);
    let kept = run(&model, &prompt, CHUNK, DECODE, BLOCK, SlidingKv::KeepEverything);
    let released = run(&model, &prompt, CHUNK, DECODE, BLOCK, SlidingKv::ReleaseBeforeWindow);
    assert_bitwise_equal(&kept, &released, "real gemma3");
    drop(model);
    // The greedy tokens: the argmax of the last prefill step and of every decode step but the
    // last (which computes the last token's K/V and would give a token past `DECODE`).
    let reference: Vec<u32> = kept[kept.len() - 1 - DECODE..kept.len() - 1].iter().map(|l| argmax(l)).collect();

    let m = engine.metrics();
    assert_eq!(m.kv_blocks_total, 2048 / BLOCK);
    // 32 running sequences × (512 + 64 positions + one block), capped by the global pool.
    assert_eq!(m.kv_sliding_blocks_total, 2048 / BLOCK);
    let (tokens, most_in_use) = generate_watching_sliding_blocks(&engine, &prompt, DECODE);
    assert_eq!(tokens, reference, "the engine's greedy tokens differ from one pool keeping everything");
    let bound = (window + CHUNK).div_ceil(BLOCK) + 1;
    assert!(most_in_use <= bound, "{most_in_use} sliding blocks in use, at most {bound} expected");
    // The decode steps ran with the window's blocks (and no more) in use.
    assert!(most_in_use >= window / BLOCK, "only {most_in_use} sliding blocks seen in use");

    // The same prompt again: 43 of its blocks (688 tokens, more than the window) come from the
    // prefix cache, sliding layers' window included, and the tokens do not change.
    let hits_before = engine.metrics().prefix_cache_hit_tokens;
    let (again, _) = generate_watching_sliding_blocks(&engine, &prompt, DECODE);
    let hit = engine.metrics().prefix_cache_hit_tokens - hits_before;
    assert_eq!(hit, ((PROMPT - 1) / BLOCK * BLOCK) as u64, "the whole cached prefix is reused");
    assert!(hit > window as u64);
    assert_eq!(again, reference, "a prefix-cache hit longer than the window changed the tokens");
}
