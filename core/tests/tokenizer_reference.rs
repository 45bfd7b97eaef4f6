//! The tokenizer and chat template against llama.cpp's reference outputs on the real SmolLM2
//! GGUF, and the BERT tokenizer.json against Python `tokenizers`.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use cortexstream::chat::ChatTemplate;
use cortexstream::gguf::GgufFile;
use cortexstream::tokenizer::Tokenizer;
use cortexstream::{ChatMessage, Error};
use serde_json::Value;

fn smollm2() -> (GgufFile, Tokenizer) {
    let gguf = GgufFile::open(common::smollm2_path()).expect("SmolLM2 GGUF opens");
    let tokenizer = Tokenizer::from_gguf(&gguf).expect("tokenizer builds from GGUF metadata");
    (gguf, tokenizer)
}

fn ids(value: &Value) -> Vec<u32> {
    value.as_array().expect("an array of ids").iter().map(|v| v.as_u64().expect("an id") as u32).collect()
}

fn text(value: &Value) -> &str {
    value.as_str().expect("a string")
}

#[test]
fn loads_from_gguf_quickly() {
    let gguf = GgufFile::open(common::smollm2_path()).unwrap();
    let start = Instant::now();
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    let elapsed = start.elapsed();
    println!("tokenizer from GGUF metadata: {elapsed:?}");
    assert_eq!(tokenizer.vocab_size(), 49152);
    assert!(elapsed.as_millis() < 1000, "loading took {elapsed:?}");
}

#[test]
fn mixed_script_text_matches_llama_cpp() {
    let (_, tokenizer) = smollm2();
    let reference = &common::reference()["tokenization"];
    assert_eq!(reference["add_special"], false);
    let input = text(&reference["text"]);
    let expected = ids(&reference["token_ids"]);
    assert_eq!(tokenizer.encode(input, false).unwrap(), expected);
    assert_eq!(tokenizer.decode(&expected, false).unwrap(), input);
}

#[test]
fn raw_prompt_and_greedy_output_match_llama_cpp() {
    let (_, tokenizer) = smollm2();
    let reference = &common::reference()["raw_completion"];
    // SmolLM2 does not ask for BOS, so adding special tokens changes nothing.
    for add_special in [false, true] {
        assert_eq!(
            tokenizer.encode(text(&reference["prompt"]), add_special).unwrap(),
            ids(&reference["prompt_token_ids"])
        );
    }
    let greedy = ids(&reference["greedy_token_ids"]);
    let greedy_text = text(&reference["greedy_text"]);
    assert_eq!(tokenizer.decode(&greedy, false).unwrap(), greedy_text);
    let streamed: Vec<u8> = greedy.iter().flat_map(|&id| tokenizer.token_bytes(id).unwrap().to_vec()).collect();
    assert_eq!(streamed, greedy_text.as_bytes());
}

#[test]
fn chat_prompt_matches_llama_cpp() {
    let (gguf, tokenizer) = smollm2();
    let reference = &common::reference()["chat_template_prompt"];
    let messages: Vec<ChatMessage> = serde_json::from_value(reference["messages"].clone()).unwrap();
    let template = ChatTemplate::from_gguf(&gguf, &tokenizer).unwrap().expect("SmolLM2 ships a chat template");
    let rendered = template.render(&messages, true).unwrap();
    assert_eq!(rendered, text(&reference["rendered"]));
    let expected = ids(&reference["token_ids"]);
    assert_eq!(tokenizer.encode(&rendered, false).unwrap(), expected);
    assert_eq!(tokenizer.decode(&expected, false).unwrap(), rendered);
}

#[test]
fn token_bytes_of_a_split_character_join_to_valid_utf8() {
    let (_, tokenizer) = smollm2();
    for text in ["你好", "Ça va"] {
        let ids = tokenizer.encode(text, false).unwrap();
        let pieces: Vec<&[u8]> = ids.iter().map(|&id| tokenizer.token_bytes(id).unwrap()).collect();
        assert!(
            pieces.iter().any(|piece| std::str::from_utf8(piece).is_err()),
            "{text:?} should have a character split across tokens: {pieces:?}"
        );
        assert_eq!(pieces.concat(), text.as_bytes());
    }
}

#[test]
fn special_tokens_and_end_of_generation() {
    let (_, tokenizer) = smollm2();
    assert_eq!(tokenizer.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tokenizer.id_to_token(0), Some("<|endoftext|>"));
    assert_eq!(tokenizer.bos_token_id(), Some(1));
    assert_eq!(tokenizer.eos_token_id(), Some(2));
    // Ids 0..=16 are CONTROL tokens in the GGUF; the first normal token is "!".
    assert!((0..=16).all(|id| tokenizer.is_special(id)));
    assert!(!tokenizer.is_special(17));
    assert_eq!(tokenizer.token_bytes(1), Some("<|im_start|>".as_bytes()));
    // EOS (<|im_end|>) first, then <|endoftext|>; as in llama.cpp's end-of-generation set.
    assert_eq!(tokenizer.end_of_generation_ids(), &[2, 0]);
    // Written literally, a special token is one id; skipped on request when decoding.
    let ids = tokenizer.encode("<|im_start|>user", false).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(tokenizer.decode(&ids, true).unwrap(), "user");
}

#[test]
fn decoding_an_unknown_id_names_the_field() {
    let (_, tokenizer) = smollm2();
    let err = tokenizer.decode(&[504, 49152], false).unwrap_err();
    assert_eq!(err.param(), Some("token_ids"), "{err}");
    assert!(err.to_string().contains("49152"), "{err}");
    assert_eq!(tokenizer.token_bytes(49152), None);
}

#[test]
fn bert_tokenizer_json_matches_python_tokenizers() {
    let path = common::minilm_dir().join("tokenizer.json");
    let tokenizer = Tokenizer::from_tokenizer_json(&path, None).unwrap();
    // Obtained with Python tokenizers 0.22:
    //   Tokenizer.from_file(".../minilm/tokenizer.json").encode("Hello world").ids
    // which gives [101, 7592, 2088, 102] followed by padding to 128, which we switch off.
    assert_eq!(tokenizer.encode("Hello world", true).unwrap(), [101, 7592, 2088, 102]);
    assert_eq!(tokenizer.encode("Hello world", false).unwrap(), [7592, 2088]);
    assert_eq!(tokenizer.decode(&[101, 7592, 2088, 102], true).unwrap(), "hello world");
    assert!(tokenizer.is_special(101));
    // BERT has neither BOS nor EOS (its tokenizer_config.json names only CLS/SEP/...).
    assert_eq!((tokenizer.bos_token_id(), tokenizer.eos_token_id()), (None, None));
    assert!(tokenizer.end_of_generation_ids().is_empty());
}

/// A GGUF v3 file with only the given string metadata, written to a per-test temp file.
fn tiny_gguf(name: &str, metadata: &[(&str, &str)]) -> PathBuf {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes()); // tensors
    bytes.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        bytes.extend((key.len() as u64).to_le_bytes());
        bytes.extend(key.as_bytes());
        bytes.extend(8u32.to_le_bytes()); // GGUF string type
        bytes.extend((value.len() as u64).to_le_bytes());
        bytes.extend(value.as_bytes());
    }
    let dir = std::env::temp_dir().join(format!("cortexstream-tokenizer-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::File::create(&path).unwrap().write_all(&bytes).unwrap();
    path
}

#[test]
fn unsupported_tokenizer_model_is_a_clear_load_error() {
    let path = tiny_gguf("rwkv.gguf", &[("tokenizer.ggml.model", "rwkv")]);
    let err = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap_err();
    assert!(matches!(err, Error::ModelLoad { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("rwkv.gguf") && message.contains("`rwkv`"), "{message}");
}

#[test]
fn chat_template_that_does_not_compile_still_loads() {
    let (_, tokenizer) = smollm2();
    let path = tiny_gguf("broken-template.gguf", &[("tokenizer.chat_template", "{% generation %}{{ x | nope }}")]);
    let template = ChatTemplate::from_gguf(&GgufFile::open(&path).unwrap(), &tokenizer)
        .expect("a broken template must not stop the model from loading")
        .expect("the template is present");
    let err = template.render(&[ChatMessage::new("user", "hi")], true).unwrap_err();
    assert!(matches!(err, Error::ChatTemplate(_)), "{err}");
    assert!(err.to_string().contains("compile"), "{err}");
}

#[test]
fn gguf_without_chat_template_has_none() {
    let (_, tokenizer) = smollm2();
    let path = tiny_gguf("no-template.gguf", &[("general.architecture", "llama")]);
    assert!(ChatTemplate::from_gguf(&GgufFile::open(&path).unwrap(), &tokenizer).unwrap().is_none());
}
