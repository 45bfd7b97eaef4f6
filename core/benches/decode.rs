//! Decode throughput through the whole engine with 1, 8 and 32 concurrent sequences.
//!
//! `cargo bench -p cortexstream --bench decode` (model from the cache, filled by
//! `python3 python/cortexstream/models.py pull all`). Environment: `BENCH_TOKENS` tokens per sequence (default 128),
//! `BENCH_THREADS` compute threads (default: physical cores), `BENCH_TEMPERATURE` (default 0:
//! greedy), `BENCH_CONCURRENCY` a
//! comma-separated list (default `1,8,32`), `BENCH_MODEL` a GGUF path (default: the cached
//! SmolLM2 Q4_1).
//!
//! Reports aggregate decode tokens/s (tokens generated after each sequence's first token,
//! over the time from the first first-token to the last token) and mean time to first token.

use std::path::PathBuf;
use std::time::Instant;

use cortexstream::{Engine, EngineConfig, Request, SamplingParams};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn model_path() -> PathBuf {
    if let Some(path) = std::env::var_os("BENCH_MODEL") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("CORTEXSTREAM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/cortexstream"));
    cache.join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Distinct prompts shaped like examples/bench/workload.py's stream prompts (about 15 tokens),
/// so no two share a cached prefix and TTFT compares with the side-by-side run.
fn prompt(i: usize) -> String {
    const TOPICS: [&str; 8] = [
        "a lighthouse keeper",
        "a clockmaker",
        "a desert caravan",
        "a deep-sea diver",
        "a mountain village",
        "a robot gardener",
        "a night train",
        "a lost violin",
    ];
    format!("Write a story about {} (#{i}).", TOPICS[i % TOPICS.len()])
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench`-less args; only run when asked.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let tokens = env_usize("BENCH_TOKENS", 128);
    let mut config = EngineConfig::new(model_path());
    config.threads = std::env::var("BENCH_THREADS").ok().and_then(|v| v.parse().ok());
    let engine = match Engine::new(config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot load the model: {e}");
            std::process::exit(1);
        }
    };
    let concurrency: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,8,32".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    // Warm-up: first-touch of the weights and scratch buffers.
    // `BENCH_TEMPERATURE` (default 0: greedy) samples with the default top-k/top-p and a seed
    // per run, to measure the sampling rows.
    let temperature: f32 = std::env::var("BENCH_TEMPERATURE").ok().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let params = if temperature > 0.0 {
        SamplingParams {
            max_tokens: Some(tokens),
            ignore_eos: true,
            temperature,
            seed: Some(7),
            ..SamplingParams::default()
        }
    } else {
        SamplingParams { max_tokens: Some(tokens), ignore_eos: true, ..SamplingParams::greedy() }
    };
    let _ = engine.generate(Request::new("Warm up.", SamplingParams { max_tokens: Some(4), ..params.clone() }));

    println!("{:>8} {:>14} {:>14} {:>12}", "streams", "decode tok/s", "per stream", "mean TTFT");
    for &n in &concurrency {
        let start = Instant::now();
        let handles: Vec<_> = (0..n)
            .map(|i| engine.submit(Request::new(prompt(i), params.clone())))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("submit failed: {e}"));
        let completions: Vec<_> = handles.into_iter().map(|h| h.wait()).collect();
        let wall = start.elapsed().as_secs_f64();
        let first_token_at =
            completions.iter().map(|c| c.timings.time_to_first_token_ns).min().unwrap_or(0) as f64 / 1e9;
        let decode_tokens: usize = completions.iter().map(|c| c.usage.completion_tokens.saturating_sub(1)).sum();
        let decode_secs = (wall - first_token_at).max(1e-9);
        let mean_ttft =
            completions.iter().map(|c| c.timings.time_to_first_token_ns as f64).sum::<f64>() / n as f64 / 1e9;
        let aggregate = decode_tokens as f64 / decode_secs;
        println!("{n:>8} {aggregate:>14.1} {:>14.1} {:>11.3}s", aggregate / n as f64, mean_ttft);
    }
}
