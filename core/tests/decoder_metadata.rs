//! Llama 3 and Phi-3 metadata: the RoPE scaling and sliding window keys are read as llama.cpp
//! reads them, and what the llama decoder cannot honour (YaRN, LongRoPE, partial rotary, a
//! tensor it does not read) fails the load naming the key or tensor and the value. Each case
//! edits a tiny F32 fixture (`tests/fixtures/{llama3,phi3}/tiny-f32.gguf`) one way.

mod gguf_writer;

use std::sync::Arc;

use cortexstream::gguf::Value;
use cortexstream::models::llama::{LlamaConfig, LlamaModel};
use cortexstream::threadpool::ThreadPool;
use cortexstream::Error;
use gguf_writer::GgufSpec;

fn load(spec: &GgufSpec) -> Result<LlamaModel, Error> {
    LlamaModel::load(&spec.to_gguf(), Arc::new(ThreadPool::new(1).expect("start the thread pool")))
}

fn config(spec: &GgufSpec) -> LlamaConfig {
    load(spec).expect("loads").config().clone()
}

/// Loading fails with a model-load error whose message contains every one of `needles`.
fn refused(spec: &GgufSpec, needles: &[&str]) {
    gguf_writer::assert_load_refused(load(spec), needles);
}

fn string(s: &str) -> Value {
    Value::String(s.into())
}

#[test]
fn linear_rope_scaling_is_read_as_llama_cpp_reads_it() {
    let cases: &[(&[(&str, Value)], f64)] = &[
        (&[], 1.0),
        (&[("llama.rope.scaling.type", string("linear")), ("llama.rope.scaling.factor", Value::F32(4.0))], 4.0),
        // No type means linear; the older key name is read too.
        (&[("llama.rope.scaling.factor", Value::F32(8.0))], 8.0),
        (&[("llama.rope.scale_linear", Value::F32(2.0))], 2.0),
        // `none` ignores the factor; 0 means unset.
        (&[("llama.rope.scaling.type", string("none")), ("llama.rope.scaling.factor", Value::F32(4.0))], 1.0),
        (&[("llama.rope.scaling.factor", Value::F32(0.0))], 1.0),
    ];
    for (keys, factor) in cases {
        let mut spec = GgufSpec::tiny_fixture("llama3");
        for (key, value) in keys.iter() {
            spec.set(key, value.clone());
        }
        assert_eq!(config(&spec).rope_linear_factor, *factor, "{keys:?}");
    }
}

#[test]
fn unimplemented_rope_scaling_is_refused_naming_key_and_value() {
    for (family, kind) in [("llama3", "yarn"), ("phi3", "su"), ("phi3", "yarn")] {
        let mut spec = GgufSpec::tiny_fixture(family);
        let key = format!("{family}.rope.scaling.type").replace("llama3", "llama");
        spec.set(&key, string(kind));
        refused(&spec, &[&key, kind]);
    }
}

#[test]
fn long_rope_caps_the_context_at_its_original_length() {
    let mut spec = GgufSpec::tiny_fixture("phi3");
    assert_eq!(config(&spec).context_length, 256);
    spec.set("phi3.rope.scaling.original_context_length", Value::U32(100));
    assert_eq!(config(&spec).context_length, 100);
    // llama.cpp's default original length is the trained one.
    spec.remove("phi3.rope.scaling.original_context_length");
    assert_eq!(config(&spec).context_length, 1024);
    // The type key (which the converter does not write for Phi-3) may say so.
    spec.set("phi3.rope.scaling.type", string("longrope"));
    assert_eq!(config(&spec).context_length, 1024);
    // Without LongRoPE factors, the trained context.
    let mut spec = GgufSpec::tiny_fixture("mistral");
    spec.set("llama.rope.scaling.original_context_length", Value::U32(100));
    assert_eq!(config(&spec).context_length, 256);
}

#[test]
fn long_rope_factors_come_in_pairs_of_positive_values() {
    for name in ["rope_factors_long.weight", "rope_factors_short.weight"] {
        let mut spec = GgufSpec::tiny_fixture("phi3");
        spec.tensors.retain(|t| t.name != name);
        refused(&spec, &["rope_factors_long.weight", "rope_factors_short.weight", "LongRoPE"]);
        let mut spec = GgufSpec::tiny_fixture("phi3");
        let factors = spec.tensors.iter_mut().find(|t| t.name == name).expect("in the fixture");
        factors.data[..4].copy_from_slice(&(-1f32).to_le_bytes());
        refused(&spec, &[name, "positive"]);
    }
    let mut spec = GgufSpec::tiny_fixture("phi3");
    let mut freqs = spec.tensor("rope_factors_short.weight").clone();
    freqs.name = "rope_freqs.weight".into();
    spec.tensors.push(freqs);
    refused(&spec, &["rope_freqs.weight", "LongRoPE"]);
    let mut spec = GgufSpec::tiny_fixture("phi3");
    spec.set("phi3.rope.scaling.attn_factor", Value::F32(-1.0));
    refused(&spec, &["`phi3.rope.scaling.attn_factor`", "f32 -1", "positive"]);
}

#[test]
fn partial_rotary_is_refused_naming_the_key() {
    let mut spec = GgufSpec::tiny_fixture("phi3");
    spec.set("phi3.rope.dimension_count", Value::U32(12));
    refused(&spec, &["`phi3.rope.dimension_count` = 12", "partial rotary"]);
}

#[test]
fn the_phi3_sliding_window_is_read_and_zero_means_none() {
    let mut spec = GgufSpec::tiny_fixture("phi3");
    assert_eq!(config(&spec).sliding_window, Some(16));
    spec.set("phi3.attention.sliding_window", Value::U32(2047));
    assert_eq!(config(&spec).sliding_window, Some(2047));
    spec.set("phi3.attention.sliding_window", Value::U32(0));
    assert_eq!(config(&spec).sliding_window, None);
    spec.remove("phi3.attention.sliding_window");
    assert_eq!(config(&spec).sliding_window, None);
    spec.set("phi3.attention.sliding_window", string("2047"));
    refused(&spec, &["phi3.attention.sliding_window"]);
}

#[test]
fn phi3_with_separate_projections_is_refused_by_tensor_name() {
    // A phi3 file has the fused `attn_qkv`; a separate `attn_q` is a tensor its forward would
    // not read.
    let mut spec = GgufSpec::tiny_fixture("phi3");
    let mut q = spec.tensor("blk.0.attn_output.weight").clone();
    q.name = "blk.0.attn_q.weight".into();
    spec.tensors.push(q);
    refused(&spec, &["blk.0.attn_q.weight"]);
}
