//! Decode CPU cost of `n` concurrent streams, for timing by CPU time and profiling: loads the
//! model once, then alternates submitting the same `n` short prompts generating 1 token and
//! `1 + tokens` tokens each, and prints the difference of their process CPU times (all
//! threads, spinning included) per step of `n` decoded rows: the decode steps alone, without
//! loading, prefill or the first token.
//!
//! `cargo run --release -p cortexstream --example streams_driver -- <gguf> 32 2 64 3`
//! (model, streams, compute threads, decoded tokens per stream, repetitions). Compare builds
//! in alternating pairs of runs.

#[path = "support/cpu_clock.rs"]
mod cpu_clock;
use cortexstream::{Engine, EngineConfig, Request, SamplingParams};
use cpu_clock::process_cpu_seconds;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().expect("usage: streams_driver <gguf> [streams] [threads] [tokens] [reps]");
    let arg = |i: usize, default: usize| args.get(i).map_or(default, |s| s.parse().expect("a number"));
    let (streams, threads, tokens, reps) = (arg(1, 32), arg(2, 2), arg(3, 64), arg(4, 3));
    let engine =
        Engine::new(EngineConfig { threads: Some(threads), ..EngineConfig::new(model) }).expect("the model loads");
    let prompts: Vec<String> =
        (0..streams).map(|i| format!("Write a story about a lighthouse keeper (#{i}).")).collect();
    let run = |max_tokens: usize| {
        let params = SamplingParams { max_tokens: Some(max_tokens), ignore_eos: true, ..SamplingParams::greedy() };
        let start = process_cpu_seconds();
        let handles: Vec<_> =
            prompts.iter().map(|p| engine.submit(Request::new(p.as_str(), params.clone())).expect("submit")).collect();
        for handle in handles {
            assert_eq!(handle.wait().token_ids.len(), max_tokens);
        }
        process_cpu_seconds() - start
    };
    run(1 + tokens); // warm-up: first touch of weights and buffers, the prefix cache filled
    let mut per_step = Vec::new();
    for _ in 0..reps {
        let (one, many) = (run(1), run(1 + tokens));
        per_step.push((many - one) / tokens as f64 * 1000.0);
    }
    let best = per_step.iter().copied().fold(f64::MAX, f64::min);
    let shown: Vec<String> = per_step.iter().map(|ms| format!("{ms:.3}")).collect();
    println!("{streams} streams, {threads} threads: decode CPU ms/step [{}], best {best:.3}", shown.join(" "));
}
