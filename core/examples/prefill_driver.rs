//! A prompt prefill in a loop through the whole engine, for profiling and for timing by CPU
//! time (wall time mostly measures the other processes on a shared machine; it is printed too,
//! for runs with several threads): loads the model once, then prefills
//! `reps` prompts of `tokens` tokens (each starts with a different token, so the prefix cache
//! never serves one) with one generated token each, and prints each prefill's process CPU
//! time (all threads) and the fastest.
//!
//! `cargo run --release -p cortexstream --example prefill_driver -- <gguf> 512 1 5`
//! (model, prompt tokens, compute threads, repetitions). Compare builds in alternating pairs
//! of runs; profile with `perf record -e cpu-clock -g` (loading is a few percent at 5 reps).

#[path = "support/cpu_clock.rs"]
mod cpu_clock;
use cortexstream::{Engine, EngineConfig, Prompt, Request, SamplingParams};
use cpu_clock::process_cpu_seconds;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().expect("usage: prefill_driver <gguf> [tokens] [threads] [reps]");
    let arg = |i: usize, default: usize| args.get(i).map_or(default, |s| s.parse().expect("a number"));
    let (tokens, threads, reps) = (arg(1, 512), arg(2, 1), arg(3, 5));
    let config = EngineConfig { threads: Some(threads), ..EngineConfig::new(model) };
    let engine = Engine::new(config).expect("the model loads");
    let paragraph = "The river ran past the old mill, where the miller's daughter counted sacks of \
                     grain each morning and wrote the numbers in a ledger her grandfather had bound. ";
    let text = engine.tokenize(paragraph, false).expect("tokenize");
    let params = SamplingParams { max_tokens: Some(1), ignore_eos: true, ..SamplingParams::greedy() };
    let (mut fastest, mut fastest_wall) = (f64::MAX, f64::MAX);
    let (mut times, mut walls) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        // A different first token per prompt: no prefix is shared with an earlier one.
        let ids: Vec<u32> =
            std::iter::once(1000 + rep as u32).chain(text.iter().copied().cycle()).take(tokens).collect();
        let (start, start_wall) = (process_cpu_seconds(), std::time::Instant::now());
        engine.generate(Request::new(Prompt::Tokens(ids), params.clone())).expect("generate");
        let (seconds, wall) = (process_cpu_seconds() - start, start_wall.elapsed().as_secs_f64());
        fastest = fastest.min(seconds);
        fastest_wall = fastest_wall.min(wall);
        times.push(format!("{seconds:.3}"));
        walls.push(format!("{wall:.3}"));
    }
    println!(
        "{tokens} tokens, {threads} threads: CPU s per prefill [{}], fastest {fastest:.3} s ({:.1} tok/CPU-s); \
         wall s [{}], fastest {fastest_wall:.3} s ({:.1} tok/s)",
        times.join(" "),
        tokens as f64 / fastest,
        walls.join(" "),
        tokens as f64 / fastest_wall
    );
}
