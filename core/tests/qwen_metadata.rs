//! Qwen 2 / Qwen 3 metadata and tensors: a value or tensor the forward cannot honour fails the
//! load with an error naming the key (or tensor) and the value, and what llama.cpp treats as
//! optional loads. Each case edits a tiny F32 fixture (`tests/fixtures/qwen{2,3}/tiny-f32.gguf`)
//! one way.

mod gguf_writer;

use std::sync::Arc;

use cortexstream::gguf::Value;
use cortexstream::models::GenerationModel;
use cortexstream::threadpool::ThreadPool;
use cortexstream::Error;
use gguf_writer::GgufSpec;

fn load(spec: &GgufSpec) -> Result<GenerationModel, Error> {
    GenerationModel::load(&spec.to_gguf(), Arc::new(ThreadPool::new(1).expect("start the thread pool")))
}

/// Loading fails with a model-load error whose message contains every one of `needles`.
fn refused(spec: &GgufSpec, needles: &[&str]) {
    gguf_writer::assert_load_refused(load(spec), needles);
}

#[test]
fn the_fixtures_load_as_qwen_models() {
    for family in ["qwen2", "qwen3"] {
        assert!(matches!(load(&GgufSpec::tiny_fixture(family)), Ok(GenerationModel::Qwen(_))), "{family}");
    }
}

#[test]
fn unhonoured_values_are_refused_naming_key_and_value() {
    for family in ["qwen2", "qwen3"] {
        let cases: Vec<(String, Value, &str)> = vec![
            // Qwen 2.5's model cards suggest YaRN for contexts past 32K.
            (format!("{family}.rope.scaling.type"), Value::String("yarn".into()), "yarn"),
            (format!("{family}.rope.scaling.factor"), Value::F32(4.0), "4"),
            (format!("{family}.attention.sliding_window"), Value::U32(4096), "4096"),
            (format!("{family}.attention.value_length"), Value::U32(8), "8"),
            (format!("{family}.rope.dimension_count"), Value::U32(8), "8"),
            (format!("{family}.attention.causal"), Value::Bool(false), "false"),
            (format!("{family}.expert_count"), Value::U32(4), "4"),
            (format!("{family}.attention.scale"), Value::F32(0.5), "0.5"),
        ];
        for (key, value, shown) in &cases {
            let mut spec = GgufSpec::tiny_fixture(family);
            spec.set(key, value.clone());
            refused(&spec, &[key, shown]);
        }
    }
}

#[test]
fn a_head_size_that_is_not_even_is_refused_naming_the_key() {
    let mut spec = GgufSpec::tiny_fixture("qwen3");
    spec.set("qwen3.attention.key_length", Value::U32(33));
    refused(&spec, &["qwen3.attention.key_length", "33"]);
}

#[test]
fn tensors_the_forward_does_not_read_are_refused_by_name() {
    // Qwen 2 has no Q/K norms; an output bias is not implemented for either.
    let cases = [
        ("qwen2", "blk.0.attn_norm.weight", "blk.0.attn_q_norm.weight"),
        ("qwen3", "output_norm.weight", "output.bias"),
    ];
    for (family, copied, name) in cases {
        let mut spec = GgufSpec::tiny_fixture(family);
        let mut extra = spec.tensor(copied).clone();
        extra.name = name.into();
        spec.tensors.push(extra);
        refused(&spec, &[name, family]);
    }
}

#[test]
fn qwen3_without_its_head_norms_is_refused_naming_the_tensor() {
    let mut spec = GgufSpec::tiny_fixture("qwen3");
    spec.remove_tensor("blk.1.attn_k_norm.weight");
    refused(&spec, &["blk.1.attn_k_norm.weight"]);
}

/// llama.cpp loads each of Qwen's Q/K/V biases only if present, so a file without some of them
/// loads (and computes without them) rather than being refused.
#[test]
fn biases_are_optional_as_in_llama_cpp() {
    let mut spec = GgufSpec::tiny_fixture("qwen2");
    spec.remove_tensor("blk.0.attn_k.bias");
    for name in ["attn_q", "attn_k", "attn_v"] {
        spec.remove_tensor(&format!("blk.2.{name}.bias"));
    }
    assert!(load(&spec).is_ok());
}

#[test]
fn a_bias_of_the_wrong_size_is_refused_naming_it() {
    let mut spec = GgufSpec::tiny_fixture("qwen2");
    let k_bias = spec.tensor("blk.0.attn_k.bias").clone();
    *spec.tensor("blk.0.attn_q.bias") = gguf_writer::TensorSpec { name: "blk.0.attn_q.bias".into(), ..k_bias };
    refused(&spec, &["blk.0.attn_q.bias"]);
}

#[test]
fn required_keys_are_named_when_missing() {
    for family in ["qwen2", "qwen3"] {
        for suffix in ["attention.layer_norm_rms_epsilon", "feed_forward_length", "block_count", "context_length"] {
            let key = format!("{family}.{suffix}");
            let mut spec = GgufSpec::tiny_fixture(family);
            spec.remove(&key);
            match load(&spec) {
                Err(e) => assert!(e.to_string().contains(&key), "{e} should name {key}"),
                Ok(_) => panic!("loaded without {key}"),
            }
        }
    }
}

#[test]
fn an_architecture_of_the_family_not_implemented_is_refused_naming_it() {
    for arch in ["qwen2moe", "qwen3moe", "qwen2vl"] {
        let mut spec = GgufSpec::tiny_fixture("qwen2");
        spec.set("general.architecture", Value::String(arch.into()));
        refused(&spec, &[arch]);
    }
}
