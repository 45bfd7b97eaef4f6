//! How many thread-pool jobs a batched decode step hands to the workers: each is a
//! publication, a wake-up and a wait for the slowest task, which at SmolLM2's size (a 32-row
//! layer is a fraction of a millisecond on two threads) is a visible share of the step. The
//! row-wise passes (residual add and norms, the gated activation) quantize the rows they
//! write for the next matmul in the same pool pass, so the QKV, gate/up and down projections
//! take no quantization job of their own.

mod common;

use std::sync::Arc;

use cortexstream::gguf::GgufFile;
use cortexstream::models::llama::LlamaModel;
use cortexstream::models::SeqChunk;
use cortexstream::threadpool::ThreadPool;

/// Jobs per layer of a 32-row decode step outside attention: QKV projection, the QKV row pass
/// (RoPE), the output projection's quantization and matmul, the residual pass, gate/up, the
/// SwiGLU pass, down, the residual pass.
const JOBS_PER_LAYER_OUTSIDE_ATTENTION: usize = 9;

#[test]
fn a_decode_step_of_32_rows_quantizes_no_projection_input_in_a_job_of_its_own() {
    let gguf = GgufFile::open(common::smollm2_path()).expect("open model");
    let pool = Arc::new(ThreadPool::new(2).expect("start the thread pool"));
    let model = LlamaModel::load(&gguf, Arc::clone(&pool)).expect("load model");
    let n_layers = model.config().n_layers;
    const SEQS: usize = 32;
    const BLOCK_SIZE: usize = 16;
    let mut kv = model.new_kv_storage(SEQS, BLOCK_SIZE);
    let tables: Vec<Vec<u32>> = (0..SEQS as u32).map(|s| vec![s]).collect();
    let tokens: Vec<u32> = (0..SEQS as u32).map(|s| 100 + 7 * s).collect();
    let decode_step = |position: usize| -> Vec<SeqChunk<'_>> {
        (0..SEQS)
            .map(|s| SeqChunk {
                tokens: &tokens[s..s + 1],
                start_pos: position,
                block_table: &tables[s],
                sliding_block_table: &[],
                want_logits: true,
            })
            .collect()
    };
    let mut logits = Vec::new();
    model.forward(&decode_step(0), &mut kv, &mut logits).expect("first step");

    // The attention's own jobs: the last layer attends only for the rows whose logits are
    // wanted (here all 32), so every layer's attention runs on the same 32 rows.
    let before = pool.dispatched_jobs();
    model.forward(&decode_step(1), &mut kv, &mut logits).expect("decode step");
    let jobs = pool.dispatched_jobs() - before;
    assert_eq!(logits.len(), SEQS * model.config().vocab_size);

    // Without the fused quantization each layer also had a quantization job before QKV,
    // gate/up and down: 3 more per layer. Attention and the head take a few jobs each; allow
    // them up to 2 per layer and 4 for the step.
    let bound = n_layers * (JOBS_PER_LAYER_OUTSIDE_ATTENTION + 2) + 4;
    assert!(jobs <= bound, "{jobs} pool jobs for a 32-row decode step of {n_layers} layers (at most {bound})");
    assert!(jobs >= n_layers * JOBS_PER_LAYER_OUTSIDE_ATTENTION, "{jobs} jobs: the step ran on the pool");
    eprintln!("{jobs} pool jobs for a 32-row decode step of {n_layers} layers");
}
