//! The matmuls of one forward step alone (no attention, no engine), for quick kernel A/B runs.
//!
//! `cargo bench -p cortexstream --bench matmul`. Two modes:
//!
//! - default: loads the Q4_1 SmolLM2 model from the cache, stacks Q/K/V and gate/up like the
//!   model does, and times every layer's matmuls plus the output head;
//! - `BENCH_TYPES=Q4_K,Q6_K,...` (ggml names, or `all`): for each tensor type, random weights of
//!   that type in the shapes of a small Llama-style model (hidden 1024, FFN 2816, 8 layers,
//!   vocabulary 32768; every dimension a multiple of 256 so the K-quants fit), timed the same way.
//!
//! Environment: `BENCH_ROWS` a comma-separated list of batch sizes (default
//! `1,4,8,32,128,512`), `BENCH_THREADS` (default: physical cores), `BENCH_SECONDS` minimum time
//! per batch size (default 2).
//!
//! Prints rows/s (tokens per second of weight work), the layers' and the head's time per step.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cortexstream::gguf::{GgmlType, GgufFile};
use cortexstream::quant::QMatrix;
use cortexstream::threadpool::{default_thread_count, ThreadPool};

fn model_path() -> PathBuf {
    let cache = std::env::var_os("CORTEXSTREAM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/cortexstream"));
    cache.join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Layers (Q/K/V stacked, attention output, gate/up stacked, down) and the output head.
type Model = (Vec<[QMatrix; 4]>, QMatrix);

fn load_smollm2() -> Model {
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
    (layers, load("token_embd.weight"))
}

/// The types `BENCH_TYPES` accepts, by ggml name, with the byte offsets of their f16 scales.
const TYPES: [(&str, GgmlType, &[usize]); 15] = [
    ("F32", GgmlType::F32, &[]),
    ("F16", GgmlType::F16, &[]),
    ("BF16", GgmlType::BF16, &[]),
    ("Q4_0", GgmlType::Q4_0, &[0]),
    ("Q4_1", GgmlType::Q4_1, &[0, 2]),
    ("Q5_0", GgmlType::Q5_0, &[0]),
    ("Q5_1", GgmlType::Q5_1, &[0, 2]),
    ("Q8_0", GgmlType::Q8_0, &[0]),
    ("Q2_K", GgmlType::Q2K, &[80, 82]),
    ("Q3_K", GgmlType::Q3K, &[108]),
    ("Q4_K", GgmlType::Q4K, &[0, 2]),
    ("Q5_K", GgmlType::Q5K, &[0, 2]),
    ("Q6_K", GgmlType::Q6K, &[208]),
    ("IQ4_NL", GgmlType::IQ4NL, &[0]),
    ("IQ4_XS", GgmlType::IQ4XS, &[0]),
];

/// Random weights of type `ty`: random bytes with small finite f16 scales (floats: small values).
fn random_matrix(ty: GgmlType, scales: &[usize], rows: usize, cols: usize, seed: &mut u64) -> QMatrix {
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    let (block_values, block_bytes) = ty.block_layout();
    let n_blocks = rows * cols / block_values;
    let mut bytes: Vec<u8> = (0..n_blocks * block_bytes).map(|_| next() as u8).collect();
    // f16 0x2000..0x23ff: about 0.008; for F16/BF16/F32 every value is then small and finite.
    let small = |b: &mut [u8], r: u64| b.copy_from_slice(&(0x2000 | (r & 0x3ff) as u16).to_le_bytes());
    match ty {
        GgmlType::F32 => bytes.chunks_exact_mut(4).for_each(|b| b.copy_from_slice(&0.01f32.to_le_bytes())),
        GgmlType::F16 | GgmlType::BF16 => bytes.chunks_exact_mut(2).for_each(|b| small(b, next())),
        _ => {
            for block in bytes.chunks_exact_mut(block_bytes) {
                scales.iter().for_each(|&at| small(&mut block[at..at + 2], next()));
            }
        }
    }
    QMatrix::from_ggml_bytes(ty, rows, cols, &bytes).unwrap_or_else(|e| panic!("{e}"))
}

fn synthetic_model(ty: GgmlType, scales: &[usize]) -> Model {
    let (hidden, kv, ffn, layers, vocab) = (1024, 256, 2816, 8, 32768);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut matrix = |rows, cols| random_matrix(ty, scales, rows, cols, &mut seed);
    let layers = (0..layers)
        .map(|_| {
            [matrix(hidden + 2 * kv, hidden), matrix(hidden, hidden), matrix(2 * ffn, hidden), matrix(hidden, ffn)]
        })
        .collect();
    (layers, matrix(vocab, hidden))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let threads = std::env::var("BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or_else(default_thread_count);
    let pool = ThreadPool::new(threads).expect("start the thread pool");
    let min_time =
        Duration::from_secs_f64(std::env::var("BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2.0));
    let sizes: Vec<usize> = std::env::var("BENCH_ROWS")
        .unwrap_or_else(|_| "1,4,8,32,128,512".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    match std::env::var("BENCH_TYPES") {
        Err(_) => {
            println!("SmolLM2-135M Q4_1");
            run(&load_smollm2(), &sizes, min_time, &pool);
        }
        Ok(list) => {
            for name in list.split(',').map(str::trim) {
                let chosen: Vec<_> =
                    TYPES.iter().filter(|(n, ..)| name == "all" || n.eq_ignore_ascii_case(name)).collect();
                if chosen.is_empty() {
                    let known: Vec<&str> = TYPES.iter().map(|(n, ..)| *n).collect();
                    panic!("BENCH_TYPES: unknown type `{name}` (known: {})", known.join(", "));
                }
                for (name, ty, scales) in chosen {
                    println!("{name}: synthetic hidden 1024, FFN 2816, 8 layers, vocabulary 32768");
                    run(&synthetic_model(*ty, scales), &sizes, min_time, &pool);
                }
            }
        }
    }
}

fn run((layers, head): &Model, sizes: &[usize], min_time: Duration, pool: &ThreadPool) {
    println!("{:>6} {:>12} {:>12} {:>10}", "rows", "rows/s", "layers ms", "head ms");
    let max_cols = layers.iter().flatten().chain([head]).map(QMatrix::cols).max().unwrap_or(0);
    let max_rows = layers.iter().flatten().chain([head]).map(QMatrix::rows).max().unwrap_or(0);
    for &m in sizes {
        let x: Vec<f32> = (0..m * max_cols).map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 2.0).collect();
        let mut out = vec![0f32; m * max_rows];
        let (mut layer_time, mut head_time, mut steps) = (Duration::ZERO, Duration::ZERO, 0u32);
        while layer_time + head_time < min_time || steps < 2 {
            let start = Instant::now();
            for layer in layers {
                for matrix in layer {
                    let (rows, cols) = (matrix.rows(), matrix.cols());
                    matrix.matmul(&x[..m * cols], m, &mut out[..m * rows], pool);
                }
            }
            let mid = Instant::now();
            head.matmul(&x[..m * head.cols()], m, &mut out[..m * head.rows()], pool);
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
