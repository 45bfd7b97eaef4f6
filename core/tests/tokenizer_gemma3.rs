//! Gemma 3's SentencePiece tokenizer (no space prefix, BOS added, 6,414 control and
//! user-defined tokens matched whole) on the real Gemma 3 270M GGUF, against llama.cpp's
//! `llama-tokenize` on the same file (`tests/fixtures/gemma3_tokenizer.json`, which says how it
//! was made). Runs when the model is in the cache (`python python/cortexstream/models.py pull
//! gemma3`); skips, printing why, when it is not.

mod common;

use std::path::PathBuf;

use cortexstream::gguf::GgufFile;
use cortexstream::tokenizer::Tokenizer;
use serde_json::Value;

const MODEL_FILE: &str = "gemma-3-270m-q4_k_m.gguf";

/// The tokenizer of the cached Gemma 3 file, or `None` (with the reason printed) when the file
/// has not been pulled.
fn gemma3() -> Option<Tokenizer> {
    let path = common::models_dir().join("gemma3").join(MODEL_FILE);
    if !path.exists() {
        println!("skipped: {} is missing; run `python python/cortexstream/models.py pull gemma3`", path.display());
        return None;
    }
    let gguf = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// The (text, ids with BOS) pairs llama.cpp produced.
fn reference_cases() -> Vec<(String, Vec<u32>)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gemma3_tokenizer.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let fixture: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cases: Vec<(String, Vec<u32>)> = fixture["cases"]
        .as_array()
        .expect("`cases` is an array")
        .iter()
        .map(|case| {
            let text = case["text"].as_str().expect("`text` is a string").to_owned();
            let ids = case["ids"]
                .as_array()
                .expect("`ids` is an array")
                .iter()
                .map(|id| u32::try_from(id.as_u64().expect("an id")).expect("a 32-bit id"))
                .collect();
            (text, ids)
        })
        .collect();
    assert!(cases.len() >= 20, "only {} cases in {}", cases.len(), path.display());
    cases
}

/// Every case tokenizes (with BOS, special tokens parsed) exactly as llama.cpp does; all
/// differences are listed at once.
#[test]
fn gemma3_tokenizes_as_llama_cpp() {
    let Some(tokenizer) = gemma3() else { return };
    let failures: Vec<String> = reference_cases()
        .into_iter()
        .filter_map(|(text, expected)| {
            let got = tokenizer.encode(&text, true).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            (got != expected).then(|| format!("{text:?}\n    expected {expected:?}\n    got      {got:?}"))
        })
        .collect();
    assert!(failures.is_empty(), "{} case(s) differ from llama.cpp:\n{}", failures.len(), failures.join("\n"));
}

/// Without a space prefix nothing is stripped on decode: the ids give back `<bos>` and the
/// text, control tokens written as themselves.
#[test]
fn gemma3_decodes_what_it_encoded() {
    let Some(tokenizer) = gemma3() else { return };
    for (text, _) in reference_cases() {
        let ids = tokenizer.encode(&text, true).unwrap();
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), format!("<bos>{text}"), "{ids:?}");
    }
}

/// Gemma's metadata conventions: BOS 2 added, EOS 1, `<end_of_turn>` ends generation, the
/// chat markers are specials matched whole.
#[test]
fn gemma3_special_tokens_follow_its_metadata() {
    let Some(tokenizer) = gemma3() else { return };
    assert_eq!(tokenizer.vocab_size(), 262_144);
    assert_eq!((tokenizer.bos_token_id(), tokenizer.eos_token_id()), (Some(2), Some(1)));
    let start = tokenizer.token_to_id("<start_of_turn>").unwrap();
    let end = tokenizer.token_to_id("<end_of_turn>").unwrap();
    assert!(tokenizer.is_special(start) && tokenizer.is_special(end));
    assert_eq!(tokenizer.encode("<start_of_turn>", false).unwrap(), [start]);
    assert!(tokenizer.end_of_generation_ids().contains(&end), "{:?}", tokenizer.end_of_generation_ids());
}
