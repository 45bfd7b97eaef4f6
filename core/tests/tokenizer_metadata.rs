//! Tokenizer metadata read from GGUF (`tokenizer.ggml.*`): what is honoured (SentencePiece's
//! `add_space_prefix`, BOS/EOS adding, EOT/EOM ids) and what fails the load with an error
//! naming the file and the key (an unknown or missing `pre`, an unsupported model, wrong types).

mod gguf_writer;

use std::path::PathBuf;

use cortexstream::gguf::{GgufFile, Value};
use cortexstream::tokenizer::Tokenizer;
use cortexstream::Error;
use gguf_writer::GgufSpec;

/// Writes `spec` to a per-test temp file and builds the tokenizer from it.
fn tokenizer_of(name: &str, spec: &GgufSpec) -> (PathBuf, cortexstream::Result<Tokenizer>) {
    let dir = std::env::temp_dir().join(format!("cortexstream-tokenizer-metadata-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.gguf"));
    std::fs::write(&path, spec.to_bytes()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap());
    (path, tokenizer)
}

/// The load error for `spec`, checked to be a [`Error::ModelLoad`] that names the file and
/// contains every one of `needles`.
fn load_error(name: &str, spec: &GgufSpec, needles: &[&str]) {
    let (path, result) = tokenizer_of(name, spec);
    let err = result.expect_err("the tokenizer must not load");
    assert!(matches!(err, Error::ModelLoad { .. }), "{err}");
    let message = err.to_string();
    let file = path.file_name().unwrap().to_str().unwrap();
    for needle in [file].iter().chain(needles) {
        assert!(message.contains(needle), "`{needle}` missing from: {message}");
    }
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String((*s).into())).collect())
}

/// A SentencePiece vocabulary: 256 byte tokens, then the pieces below (ids 256..), with
/// Llama's `<unk>`/`<s>`/`</s>` at the end.
const PIECES: &[(&str, f32, i32)] = &[
    ("▁", -1.0, 1),              // 256
    ("H", -1.0, 1),              // 257
    ("i", -1.0, 1),              // 258
    ("Hi", -2.0, 1),             // 259
    ("▁Hi", -3.0, 1),            // 260
    ("<start_of_turn>", 0.0, 3), // 261: a control token, matched whole
    ("<unk>", 0.0, 2),           // 262
    ("<s>", 0.0, 3),             // 263
    ("</s>", 0.0, 3),            // 264
    ("<end_of_turn>", 0.0, 3),   // 265
];

fn sentencepiece_spec() -> GgufSpec {
    let mut texts: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
    let mut scores = vec![Value::F32(0.0); 256];
    let mut types = vec![Value::I32(6); 256];
    for &(text, score, ty) in PIECES {
        texts.push(text.into());
        scores.push(Value::F32(score));
        types.push(Value::I32(ty));
    }
    let mut spec = GgufSpec { version: 3, metadata: Vec::new(), tensors: Vec::new() };
    spec.set("tokenizer.ggml.model", Value::String("llama".into()))
        .set("tokenizer.ggml.tokens", Value::Array(texts.into_iter().map(Value::String).collect()))
        .set("tokenizer.ggml.scores", Value::Array(scores))
        .set("tokenizer.ggml.token_type", Value::Array(types))
        .set("tokenizer.ggml.bos_token_id", Value::U32(263))
        .set("tokenizer.ggml.eos_token_id", Value::U32(264));
    spec
}

#[test]
fn sentencepiece_space_prefix_follows_the_metadata() {
    // Llama 2's convention (the default): a space is prefixed, so "Hi" is "▁Hi".
    let (_, llama) = tokenizer_of("spm-prefix", &sentencepiece_spec());
    let llama = llama.unwrap();
    assert_eq!(llama.encode("Hi", false).unwrap(), [260]);
    assert_eq!(llama.encode("Hi", true).unwrap(), [263, 260]);
    assert_eq!(llama.decode(&[263, 260], true).unwrap(), "Hi");
    // After a token matched whole the prefix is added again.
    assert_eq!(llama.encode("<start_of_turn>Hi", false).unwrap(), [261, 260]);

    // Gemma's convention: `add_space_prefix = false`; "Hi" stays "Hi".
    let mut spec = sentencepiece_spec();
    spec.set("tokenizer.ggml.add_space_prefix", Value::Bool(false));
    let (_, gemma) = tokenizer_of("spm-no-prefix", &spec);
    let gemma = gemma.unwrap();
    assert_eq!(gemma.encode("Hi", false).unwrap(), [259]);
    assert_eq!(gemma.encode("<start_of_turn>Hi Hi", false).unwrap(), [261, 259, 260]);
    assert_eq!(gemma.decode(&[259, 260], true).unwrap(), "Hi Hi");
    // Byte fallback for what the vocabulary lacks: "é" is C3 A9.
    assert_eq!(gemma.encode("é", false).unwrap(), [0xC3, 0xA9]);
}

#[test]
fn add_bos_and_add_eos_tokens_are_honoured() {
    let mut spec = sentencepiece_spec();
    spec.set("tokenizer.ggml.add_bos_token", Value::Bool(false)).set("tokenizer.ggml.add_eos_token", Value::Bool(true));
    let (_, tokenizer) = tokenizer_of("spm-eos", &spec);
    assert_eq!(tokenizer.unwrap().encode("Hi", true).unwrap(), [260, 264]);
}

#[test]
fn eot_and_eom_ids_from_metadata_end_generation() {
    let mut spec = sentencepiece_spec();
    spec.set("tokenizer.ggml.eot_token_id", Value::U32(265)).set("tokenizer.ggml.eom_token_id", Value::U32(261));
    let (_, tokenizer) = tokenizer_of("spm-eot", &spec);
    assert_eq!(tokenizer.unwrap().end_of_generation_ids(), [264, 265, 261]);
}

#[test]
fn special_ids_outside_the_vocabulary_fail_the_load() {
    let mut spec = sentencepiece_spec();
    spec.set("tokenizer.ggml.eot_token_id", Value::U32(9999));
    load_error("spm-bad-eot", &spec, &["EOT token id 9999"]);
}

#[test]
fn metadata_of_the_wrong_type_fails_the_load_naming_the_key() {
    let cases: [(&str, Value); 4] = [
        ("tokenizer.ggml.add_space_prefix", Value::String("no".into())),
        ("tokenizer.ggml.add_bos_token", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::String("</s>".into())),
        ("tokenizer.ggml.scores", strings(&["0.5"])),
    ];
    for (i, (key, value)) in cases.into_iter().enumerate() {
        let mut spec = sentencepiece_spec();
        spec.set(key, value);
        load_error(&format!("spm-wrong-type-{i}"), &spec, &[key]);
    }
}

#[test]
fn adding_bos_without_a_bos_id_fails_the_load() {
    let mut spec = GgufSpec::tiny_llama();
    spec.remove("tokenizer.ggml.bos_token_id").set("tokenizer.ggml.add_bos_token", Value::Bool(true));
    load_error("bpe-bos-missing", &spec, &["tokenizer.ggml.add_bos_token", "tokenizer.ggml.bos_token_id"]);
}

#[test]
fn unknown_pre_tokenizer_fails_the_load_naming_the_value() {
    let mut spec = GgufSpec::tiny_llama();
    spec.set("tokenizer.ggml.pre", Value::String("deepseek-v3".into()));
    load_error("bpe-unknown-pre", &spec, &["`deepseek-v3`", "tokenizer.ggml.pre", "tokenizer.json"]);
}

#[test]
fn missing_pre_tokenizer_fails_the_load() {
    let mut spec = GgufSpec::tiny_llama();
    spec.remove("tokenizer.ggml.pre");
    load_error("bpe-no-pre", &spec, &["missing metadata `tokenizer.ggml.pre`", "tokenizer.json"]);
}

#[test]
fn every_supported_pre_tokenizer_loads() {
    for pre in ["llama-bpe", "llama3", "llama-v3", "qwen2", "smollm", "starcoder", "gpt-2", "gpt2", "mpt", "default"] {
        let mut spec = GgufSpec::tiny_llama();
        spec.set("tokenizer.ggml.pre", Value::String(pre.into()));
        let (_, tokenizer) = tokenizer_of(&format!("bpe-{pre}"), &spec);
        let tokenizer = tokenizer.unwrap_or_else(|e| panic!("{pre}: {e}"));
        // Llama 3 adds BOS unless the file says otherwise (llama.cpp's default); others do not.
        let with_special = tokenizer.encode("ta", true).unwrap();
        assert_eq!(with_special.first() == Some(&257), pre.starts_with("llama"), "{pre}: {with_special:?}");
    }
}

#[test]
fn unsupported_tokenizer_model_fails_the_load_naming_the_value() {
    let mut spec = GgufSpec::tiny_llama();
    spec.set("tokenizer.ggml.model", Value::String("rwkv".into()));
    load_error("rwkv", &spec, &["unsupported tokenizer model `rwkv`", "tokenizer.ggml.model"]);
}

/// A HuggingFace tokenizer.json for the tiny model's byte-level vocabulary.
fn tiny_tokenizer_json() -> String {
    let chars = gguf_writer::gpt2_byte_chars();
    let mut vocab: serde_json::Map<String, serde_json::Value> =
        chars.iter().enumerate().map(|(id, c)| (c.to_string(), id.into())).collect();
    for (id, token) in [(256, "Ġt"), (257, "<|im_start|>"), (258, "<|im_end|>")] {
        vocab.insert(token.into(), id.into());
    }
    let added = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    let byte_level =
        serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(257, "<|im_start|>"), added(258, "<|im_end|>")],
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "vocab": vocab, "merges": ["Ġ t"]}
    })
    .to_string()
}

/// The way out of an unknown `pre`: a tokenizer.json next to the model is used instead of the
/// metadata, so the engine loads (and tokenizes with the tokenizer.json).
#[test]
fn unknown_pre_with_a_tokenizer_json_beside_the_model_loads() {
    use cortexstream::{Engine, EngineConfig};
    let dir = std::env::temp_dir().join(format!("cortexstream-tokenizer-json-beside-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut spec = GgufSpec::tiny_llama();
    spec.set("tokenizer.ggml.pre", Value::String("deepseek-v3".into()));
    let model = dir.join("model.gguf");
    std::fs::write(&model, spec.to_bytes()).unwrap();
    let config = || EngineConfig { threads: Some(1), kv_cache_tokens: 256, ..EngineConfig::new(&model) };

    let err = Engine::new(config()).expect_err("no tokenizer.json yet: the unknown pre must fail the load");
    assert!(err.to_string().contains("`deepseek-v3`"), "{err}");

    std::fs::write(dir.join("tokenizer.json"), tiny_tokenizer_json()).unwrap();
    let engine = Engine::new(config()).expect("the tokenizer.json beside the model is used");
    assert_eq!(engine.tokenize("<|im_start|> t", false).unwrap(), [257, 256]);
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}
