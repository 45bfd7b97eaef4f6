//! The model's forward alone (no engine, scheduler or sampling) for `n` decode rows a step,
//! for timing by CPU time: loads a llama-family GGUF, prefills one token for each of `n`
//! sequences, then runs `steps` decode steps of `n` rows at growing positions and prints the
//! process CPU time (all threads, spinning included) per step, with the pool jobs per step.
//!
//! `cargo run --release -p cortexstream --example step_driver -- <gguf> 32 2 200`
//! (model, rows, compute threads, steps). Compare builds in alternating pairs of runs.

#[path = "support/cpu_clock.rs"]
mod cpu_clock;
use std::sync::Arc;

use cortexstream::gguf::GgufFile;
use cortexstream::models::llama::LlamaModel;
use cortexstream::models::SeqChunk;
use cortexstream::threadpool::ThreadPool;
use cpu_clock::process_cpu_seconds;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().expect("usage: step_driver <gguf> [rows] [threads] [steps]");
    let arg = |i: usize, default: usize| args.get(i).map_or(default, |s| s.parse().expect("a number"));
    let (rows, threads, steps) = (arg(1, 32), arg(2, 2), arg(3, 200));
    let gguf = GgufFile::open(path).expect("open the model");
    let pool = Arc::new(ThreadPool::new(threads).expect("start the thread pool"));
    let model = LlamaModel::load(&gguf, Arc::clone(&pool)).expect("load the model");
    const BLOCK_SIZE: usize = 16;
    let blocks_each = (steps + 1).div_ceil(BLOCK_SIZE);
    let mut kv = model.new_kv_storage(rows * blocks_each, BLOCK_SIZE);
    let tables: Vec<Vec<u32>> = (0..rows).map(|s| (0..blocks_each).map(|b| (b * rows + s) as u32).collect()).collect();
    let tokens: Vec<u32> = (0..rows as u32).map(|s| 100 + 7 * s).collect();
    let step = |position: usize| -> Vec<SeqChunk<'_>> {
        (0..rows)
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
    model.forward(&step(0), &mut kv, &mut logits).expect("first step");
    let (cpu, jobs) = (process_cpu_seconds(), pool.dispatched_jobs());
    for position in 1..=steps {
        model.forward(&step(position), &mut kv, &mut logits).expect("decode step");
    }
    let per_step_ms = (process_cpu_seconds() - cpu) / steps as f64 * 1000.0;
    let jobs_per_step = (pool.dispatched_jobs() - jobs) / steps;
    println!("{rows} rows, {threads} threads: {per_step_ms:.3} CPU ms/step, {jobs_per_step} pool jobs/step");
}
