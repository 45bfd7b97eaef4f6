//! One stream's decode at a long context, for timing by CPU time and profiling: loads the
//! model once, prefills a `depth`-token prompt once (one generated token), then alternates
//! requests with the same prompt (the prefix cache serves it, only its last partial block is
//! recomputed) generating 1 and `1 + tokens` tokens, and prints the difference of their
//! process CPU times (all threads) per decoded token: the decode steps at that depth alone.
//!
//! `cargo run --release -p cortexstream --example long_decode_driver -- <gguf> 8000 1 32 3`
//! (model, depth, compute threads, decoded tokens, repetitions). Compare builds in
//! alternating pairs of runs. `KV_TYPE=q8_0` sets the cache type, `KV_TOKENS=N` its capacity
//! (default: the depth and the tokens); the peak RSS printed shows what the cache commits.

#[path = "support/cpu_clock.rs"]
mod cpu_clock;
use cortexstream::{Engine, EngineConfig, Prompt, Request, SamplingParams};
use cpu_clock::process_cpu_seconds;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().expect("usage: long_decode_driver <gguf> [depth] [threads] [tokens] [reps]");
    let arg = |i: usize, default: usize| args.get(i).map_or(default, |s| s.parse().expect("a number"));
    let (depth, threads, tokens, reps) = (arg(1, 8000), arg(2, 1), arg(3, 32), arg(4, 3));
    let config = EngineConfig {
        threads: Some(threads),
        // `KV_TOKENS`: a larger cache (e.g. the default 16384) to see what the unused part costs.
        kv_cache_tokens: std::env::var("KV_TOKENS").map_or(depth + tokens + 64, |n| n.parse().expect("a number")),
        kv_cache_type: std::env::var("KV_TYPE").map_or(Default::default(), |t| t.parse().expect("a KV type")),
        ..EngineConfig::new(model)
    };
    let engine = Engine::new(config).expect("the model loads");
    let paragraph = "The river ran past the old mill, where the miller's daughter counted sacks of \
                     grain each morning and wrote the numbers in a ledger her grandfather had bound. ";
    let text = engine.tokenize(paragraph, false).expect("tokenize");
    let ids: Vec<u32> = std::iter::once(1000).chain(text.iter().copied().cycle()).take(depth).collect();
    let run = |max_tokens: usize| {
        let params = SamplingParams { max_tokens: Some(max_tokens), ignore_eos: true, ..SamplingParams::greedy() };
        let start = process_cpu_seconds();
        let completion = engine.generate(Request::new(Prompt::Tokens(ids.clone()), params)).expect("generate");
        assert_eq!(completion.token_ids.len(), max_tokens);
        process_cpu_seconds() - start
    };
    let prefill = run(1);
    let mut per_token = Vec::new();
    for _ in 0..reps {
        let (one, many) = (run(1), run(1 + tokens));
        per_token.push((many - one) / tokens as f64 * 1000.0);
    }
    let best = per_token.iter().copied().fold(f64::MAX, f64::min);
    let shown: Vec<String> = per_token.iter().map(|ms| format!("{ms:.2}")).collect();
    println!(
        "depth {depth}, {threads} threads: prefill {prefill:.1} CPU s; decode CPU ms/token [{}], best {best:.2}; peak RSS {} MB",
        shown.join(" "),
        peak_rss_kb() / 1024
    );
}

/// Peak resident memory of this process (`VmHWM`, Linux; 0 elsewhere).
fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or("");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse().ok()).unwrap_or(0)
}
