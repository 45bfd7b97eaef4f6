//! Gemma 3 metadata: every key the forward depends on is read, and a value it cannot honour
//! fails the load with an error naming the key (or tensor) and the value. Each case edits the
//! tiny F32 fixture (`tests/fixtures/gemma3/tiny-f32.gguf`) one way.

mod gguf_writer;

use std::path::PathBuf;
use std::sync::Arc;

use cortexstream::gguf::{GgmlType, GgufFile, Value};
use cortexstream::models::gemma3::{Gemma3Config, Gemma3Model};
use cortexstream::threadpool::ThreadPool;
use cortexstream::Error;
use gguf_writer::GgufSpec;

fn load(spec: &GgufSpec) -> Result<Gemma3Model, Error> {
    Gemma3Model::load(&spec.to_gguf(), Arc::new(ThreadPool::new(1).expect("start the thread pool")))
}

fn config(spec: &GgufSpec) -> Gemma3Config {
    load(spec).expect("loads").config().clone()
}

/// Loading fails with a model-load error whose message contains every one of `needles`.
fn refused(spec: &GgufSpec, needles: &[&str]) {
    gguf_writer::assert_load_refused(load(spec), needles);
}

#[test]
fn the_fixture_loads_with_the_values_it_declares() {
    let c = config(&GgufSpec::tiny_fixture("gemma3"));
    assert_eq!((c.hidden_size, c.n_layers, c.ffn_size, c.context_length), (64, 6, 96, 256));
    assert_eq!(c.rms_eps, 1e-6);
}

#[test]
fn unhonoured_values_are_refused_naming_key_and_value() {
    let cases: &[(&str, Value, &str)] = &[
        ("gemma3.final_logit_softcapping", Value::F32(30.0), "30"),
        ("gemma3.attn_logit_softcapping", Value::F32(50.0), "50"),
        ("gemma3.attention.scale", Value::F32(0.0625), "0.0625"),
        ("gemma3.rope.scaling.type", Value::String("linear".into()), "linear"),
        ("gemma3.rope.scaling.factor", Value::F32(8.0), "8"),
        ("gemma3.attention.causal", Value::Bool(false), "false"),
        ("gemma3.attention.value_length", Value::U32(32), "32"),
        ("gemma3.expert_count", Value::U32(4), "4"),
        ("gemma3.rope.scale_linear", Value::F32(0.125), "0.125"),
        ("gemma3.rope.scaling.attn_factor", Value::F32(1.5), "1.5"),
        ("gemma3.attention.key_length_swa", Value::U32(8), "8"),
        ("gemma3.rope.dimension_count_swa", Value::U32(8), "8"),
    ];
    for (key, value, shown) in cases {
        let mut spec = GgufSpec::tiny_fixture("gemma3");
        spec.set(key, value.clone());
        refused(&spec, &[key, shown]);
    }
}

#[test]
fn keys_of_the_wrong_type_are_refused_naming_the_key() {
    for (key, value) in [
        ("gemma3.attention.sliding_window", Value::String("8".into())),
        ("gemma3.rope.freq_base_swa", Value::String("10000".into())),
        ("gemma3.attention.sliding_window_pattern", Value::Array(vec![Value::Bool(true); 5])),
        ("gemma3.attention.sliding_window_pattern", Value::String("6".into())),
    ] {
        let mut spec = GgufSpec::tiny_fixture("gemma3");
        spec.set(key, value);
        refused(&spec, &[key]);
    }
}

#[test]
fn a_tensor_the_forward_does_not_read_is_refused_by_name() {
    let mut spec = GgufSpec::tiny_fixture("gemma3");
    let mut bias = spec.tensor("blk.0.attn_q_norm.weight").clone();
    bias.name = "blk.0.attn_q.bias".into();
    spec.tensors.push(bias);
    refused(&spec, &["blk.0.attn_q.bias"]);
}

#[test]
fn the_sliding_pattern_and_rope_bases_are_read_as_llama_cpp_reads_them() {
    // A period: every n-th layer is global.
    let mut spec = GgufSpec::tiny_fixture("gemma3");
    spec.set("gemma3.attention.sliding_window_pattern", Value::U32(2));
    assert_eq!(config(&spec).sliding_layers, [true, false, true, false, true, false]);
    // One bool per layer.
    let flags = [false, true, true, false, true, true];
    spec.set("gemma3.attention.sliding_window_pattern", Value::Array(flags.iter().map(|&f| Value::Bool(f)).collect()));
    assert_eq!(config(&spec).sliding_layers, flags);
    // No window: no layer slides, whatever the pattern.
    spec.remove("gemma3.attention.sliding_window");
    let c = config(&spec);
    assert_eq!((c.sliding_window, c.sliding_layers), (None, vec![false; 6]));
    // The sliding layers' RoPE base defaults to llama.cpp's 10000.
    let mut spec = GgufSpec::tiny_fixture("gemma3");
    spec.set("gemma3.rope.freq_base_swa", Value::F32(500.0));
    assert_eq!(config(&spec).rope_theta_swa, 500.0);
    spec.remove("gemma3.rope.freq_base_swa");
    assert_eq!(config(&spec).rope_theta_swa, 10_000.0);
}

#[test]
fn required_keys_are_named_when_missing() {
    for key in ["gemma3.attention.layer_norm_rms_epsilon", "gemma3.feed_forward_length", "gemma3.block_count"] {
        let mut spec = GgufSpec::tiny_fixture("gemma3");
        spec.remove(key);
        match load(&spec) {
            Err(e) => assert!(e.to_string().contains(key), "{e} should name {key}"),
            Ok(_) => panic!("loaded without {key}"),
        }
    }
}

/// Real quantized files mix tensor types inside a layer (Gemma 3 270M Q4_K_M: Q5_0 `attn_q`
/// and `attn_k` beside a Q8_0 `attn_v`). Such a file loads, and the projection it can no
/// longer fuse gives the right outputs: the logits stay within the Q8_0 bound of the
/// transformers reference (`gemma3_reference.rs`).
#[test]
fn projections_of_mixed_tensor_types_load_and_compute_correctly() {
    let q8_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gemma3/tiny-q8_0.gguf");
    let q8 = GgufFile::open(q8_path).expect("open the Q8_0 fixture");
    let mut spec = GgufSpec::tiny_fixture("gemma3");
    for name in ["blk.0.attn_v.weight", "blk.3.ffn_up.weight"] {
        let (info, data) = q8.tensor_bytes(name).expect("tensor");
        assert_eq!(info.ty, GgmlType::Q8_0);
        let tensor = spec.tensor(name);
        tensor.ty = 8; // ggml's Q8_0
        tensor.data = data.to_vec();
    }
    let model = load(&spec).expect("mixed types load");

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gemma3");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).expect("json")).expect("valid");
    let ids: Vec<u32> =
        meta["prompts"][0]["ids"].as_array().expect("ids").iter().map(|v| v.as_u64().expect("id") as u32).collect();
    let bytes = std::fs::read(dir.join("reference_logits.f64")).expect("logits");
    let vocab = model.config().vocab_size;
    let last_row = &bytes[(ids.len() - 1) * vocab * 8..ids.len() * vocab * 8];
    let reference: Vec<f64> = last_row.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8"))).collect();

    let mut kv = model.new_kv_storage(ids.len().div_ceil(4), 4);
    let table: Vec<u32> = (0..ids.len().div_ceil(4) as u32).collect();
    let mut logits = Vec::new();
    let chunk = cortexstream::models::SeqChunk {
        tokens: &ids,
        start_pos: 0,
        block_table: &table,
        sliding_block_table: &[],
        want_logits: true,
    };
    model.forward(&[chunk], &mut kv, &mut logits).expect("forward");
    let max_error = logits.iter().zip(&reference).map(|(&o, &r)| (o as f64 - r).abs()).fold(0.0, f64::max);
    assert!(max_error <= 0.40, "max logit error {max_error} with mixed tensor types");
}
