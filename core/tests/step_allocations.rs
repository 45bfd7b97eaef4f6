//! A warmed-up forward step allocates nothing: every buffer (activations, attention tasks and
//! scores, logits) is reused from the previous step of the same or a smaller shape.
//!
//! Counts every heap allocation in the process (worker threads included) with a counting
//! global allocator, so this file holds this one test only.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cortexstream::gguf::GgufFile;
use cortexstream::kv_cache::KvCacheType;
use cortexstream::models::llama::LlamaModel;
use cortexstream::models::{LogitRows, SeqChunk};
use cortexstream::threadpool::ThreadPool;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn warm_decode_and_prefill_steps_do_not_allocate() {
    // Both cache formats (the 8-bit one keeps quantized query and key blocks per task). 8
    // sequences: the fused head's 512-bit pair path starts at 8 rows; 16: where the CPU has
    // AMX, the head (Q8_0) takes the fused AMX path from 16 rows (per-thread AMX workspaces
    // and 16-lane argmax scratch).
    for cache_type in [KvCacheType::F16, KvCacheType::Q8_0] {
        for seqs in [8, 16] {
            check_warm_steps_do_not_allocate(cache_type, seqs);
        }
    }
}

fn check_warm_steps_do_not_allocate(cache_type: KvCacheType, seqs: usize) {
    let gguf = GgufFile::open(common::smollm2_path()).expect("open model");
    let model =
        LlamaModel::load(&gguf, Arc::new(ThreadPool::new(2).expect("start the thread pool"))).expect("load model");
    const BLOCK_SIZE: usize = 16;
    const BLOCKS_EACH: usize = 4;
    let mut kv = model.new_kv_storage(seqs * BLOCKS_EACH, BLOCK_SIZE).with_cache_type(cache_type);
    let tables: Vec<Vec<u32>> = (0..seqs).map(|s| (0..BLOCKS_EACH).map(|b| (b * seqs + s) as u32).collect()).collect();
    let tokens: Vec<u32> = (0..40).map(|i| 100 + i * 7).collect();
    let mut logits = Vec::new();

    // Prefill 20 tokens of every sequence, then decode steps at growing positions.
    let step = |start: usize, len: usize| -> Vec<SeqChunk<'_>> {
        tables
            .iter()
            .map(|table| SeqChunk {
                tokens: &tokens[start..start + len],
                start_pos: start,
                block_table: table,
                sliding_block_table: &[],
                want_logits: true,
            })
            .collect()
    };
    // Greedy rows take the fused head (argmax only, no logits written) beside a row that
    // wants its logits: the engine's usual decode step.
    let mut greedy_rows = LogitRows { argmax_only: (0..seqs).map(|s| s % 5 != 1).collect(), ..LogitRows::default() };
    let prefill = step(0, 20);
    model.forward(&prefill, &mut kv, &mut logits).expect("prefill");
    // Warm-up decode at the longest span the measured steps reach.
    let warm = step(39, 1);
    model.forward(&warm, &mut kv, &mut logits).expect("warm-up decode");
    model.forward_rows(&warm, &mut kv, &mut greedy_rows).expect("warm-up greedy decode");

    let decodes: Vec<Vec<SeqChunk<'_>>> = (20..30).map(|p| step(p, 1)).collect();
    let smaller_prefill = step(20, 10);
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for chunks in &decodes {
        model.forward(chunks, &mut kv, &mut logits).expect("decode");
        model.forward_rows(chunks, &mut kv, &mut greedy_rows).expect("greedy decode");
    }
    model.forward(&smaller_prefill, &mut kv, &mut logits).expect("prefill again");
    let allocated = ALLOCATIONS.load(Ordering::SeqCst) - before;
    assert_eq!(allocated, 0, "{cache_type} KV, {seqs} sequences: warm forward steps allocated {allocated} times");
}
