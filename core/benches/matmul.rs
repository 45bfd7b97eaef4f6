//! The matmuls of one forward step alone (no attention, no engine), for quick kernel A/B runs.
//!
//! `cargo bench -p cortexstream --bench matmul`. Loads the Q4_1 SmolLM2 model from the cache,
//! stacks Q/K/V and gate/up like the model does, and times every layer's matmuls plus the
//! output head for a batch of `m` activation rows. Environment: `BENCH_ROWS` a comma-separated
//! list of batch sizes (default `1,4,8,32,128,512`), `BENCH_THREADS` (default: physical cores),
//! `BENCH_SECONDS` minimum time per batch size (default 2).
//!
//! Prints rows/s (tokens per second of weight work) and the head's share of the time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cortexstream::gguf::GgufFile;
use cortexstream::quant::QMatrix;
use cortexstream::threadpool::{default_thread_count, ThreadPool};

fn model_path() -> PathBuf {
    let cache = std::env::var_os("CORTEXSTREAM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/cortexstream"));
    cache.join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let gguf = GgufFile::open(model_path()).unwrap_or_else(|e| panic!("cannot open the model: {e}"));
    let load = |name: &str| QMatrix::from_gguf(&gguf, name).unwrap_or_else(|e| panic!("{e}"));
    let n_layers = gguf.require_u64("llama.block_count").expect("block_count") as usize;
    let mut layers = Vec::new();
    for l in 0..n_layers {
        let name = |s: &str| format!("blk.{l}.{s}.weight");
        let qkv = QMatrix::concat_rows(&[load(&name("attn_q")), load(&name("attn_k")), load(&name("attn_v"))]);
        let gate_up = QMatrix::concat_rows(&[load(&name("ffn_gate")), load(&name("ffn_up"))]);
        layers.push([
            qkv.expect("qkv"),
            load(&name("attn_output")),
            gate_up.expect("gate_up"),
            load(&name("ffn_down")),
        ]);
    }
    let head = load("token_embd.weight");
    let threads = std::env::var("BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or_else(default_thread_count);
    let pool = ThreadPool::new(threads).expect("start the thread pool");
    let min_time =
        Duration::from_secs_f64(std::env::var("BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2.0));
    let sizes: Vec<usize> = std::env::var("BENCH_ROWS")
        .unwrap_or_else(|_| "1,4,8,32,128,512".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();

    println!("{:>6} {:>12} {:>12} {:>10}", "rows", "rows/s", "layers ms", "head ms");
    for &m in &sizes {
        let max_cols = 1536;
        let x: Vec<f32> = (0..m * max_cols).map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 2.0).collect();
        let mut out = vec![0f32; m * head.rows().max(3072)];
        let (mut layer_time, mut head_time, mut steps) = (Duration::ZERO, Duration::ZERO, 0u32);
        while layer_time + head_time < min_time || steps < 2 {
            let start = Instant::now();
            for layer in &layers {
                for matrix in layer {
                    let (rows, cols) = (matrix.rows(), matrix.cols());
                    matrix.matmul(&x[..m * cols], m, &mut out[..m * rows], &pool);
                }
            }
            let mid = Instant::now();
            head.matmul(&x[..m * head.cols()], m, &mut out[..m * head.rows()], &pool);
            layer_time += mid - start;
            head_time += mid.elapsed();
            steps += 1;
        }
        let per_step = (layer_time + head_time).as_secs_f64() / steps as f64;
        println!(
            "{m:>6} {:>12.1} {:>12.2} {:>10.2}",
            m as f64 / per_step,
            layer_time.as_secs_f64() * 1e3 / steps as f64,
            head_time.as_secs_f64() * 1e3 / steps as f64
        );
    }
}
