//! Tokenizers built from GGUF metadata against llama.cpp's own tokenizer test data: the
//! vocab-only GGUFs `ggml-vocab-*.gguf` with their `.inp` (inputs) and `.out` (expected ids)
//! from llama.cpp's `models/` (see `tests/fixtures/vocab/README.md`). llama.cpp's
//! `tests/test-tokenizer-0.cpp` tokenizes each input without adding BOS/EOS; so do we.

mod gguf_writer;

use std::path::PathBuf;

use cortexstream::gguf::{GgufFile, Value};
use cortexstream::tokenizer::Tokenizer;
use gguf_writer::GgufSpec;

/// The line that separates cases in a `.inp` file (a newline before and after it belongs to it).
const CASE_SEPARATOR: &str = "\n__ggml_vocab_test__\n";

fn vocab_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/vocab")
}

fn load(kind: &str) -> Tokenizer {
    let path = vocab_dir().join(format!("ggml-vocab-{kind}.gguf"));
    let gguf = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

/// The (input, expected ids) cases of one vocabulary, read as test-tokenizer-0 reads them: the
/// `.inp` text split at the separator (a separator at the very end starts no further case), one
/// `.out` line of space-separated ids per case, in order.
fn cases(kind: &str) -> Vec<(String, Vec<u32>)> {
    let read = |ext: &str| {
        let path = vocab_dir().join(format!("ggml-vocab-{kind}.gguf.{ext}"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let (inputs, outputs) = (read("inp"), read("out"));
    let mut texts: Vec<&str> = inputs.split(CASE_SEPARATOR).collect();
    if inputs.ends_with(CASE_SEPARATOR) {
        texts.pop();
    }
    let expected: Vec<Vec<u32>> = outputs
        .lines()
        .map(|line| line.split_whitespace().map(|id| id.parse().expect("a token id")).collect())
        .collect();
    assert_eq!(texts.len(), expected.len(), "{kind}: .inp and .out have different numbers of cases");
    assert!(texts.len() > 30, "{kind}: only {} cases parsed", texts.len());
    texts.into_iter().map(str::to_owned).zip(expected).collect()
}

/// Every case of `kind` tokenizes exactly as llama.cpp does; all failures are listed at once.
fn check_vocab(kind: &str) {
    check_cases(kind, &load(kind));
}

/// Every case of `kind` (its `.inp`/`.out`) tokenizes with `tokenizer` exactly as llama.cpp does.
fn check_cases(kind: &str, tokenizer: &Tokenizer) {
    let failures: Vec<String> = cases(kind)
        .into_iter()
        .filter_map(|(text, expected)| {
            let got = tokenizer.encode(&text, false).unwrap_or_else(|e| panic!("{kind}: {text:?}: {e}"));
            (got != expected).then(|| format!("{text:?}\n    expected {expected:?}\n    got      {got:?}"))
        })
        .collect();
    assert!(failures.is_empty(), "{kind}: {} case(s) differ from llama.cpp:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn llama_spm_matches_llama_cpp() {
    check_vocab("llama-spm");
}

#[test]
fn phi_3_spm_with_control_and_user_defined_tokens_matches_llama_cpp() {
    check_vocab("phi-3");
}

#[test]
fn gpt_2_matches_llama_cpp() {
    check_vocab("gpt-2");
}

/// `starcoder` shares llama.cpp's pre-tokenizer with `smollm` (digits alone, then GPT-2's regex).
#[test]
fn starcoder_digits_then_gpt2_pre_tokenizer_matches_llama_cpp() {
    check_vocab("starcoder");
}

/// Llama 3's pre-tokenizer (digits in groups of up to three, `ignore_merges`) on its 128k vocabulary.
#[test]
fn llama_bpe_matches_llama_cpp() {
    check_vocab("llama-bpe");
}

/// Qwen 2's pre-tokenizer (every digit alone) with its user-defined tokens.
#[test]
fn qwen2_matches_llama_cpp() {
    check_vocab("qwen2");
}

/// llama.cpp's `default` pre-tokenizer (four regexes, one after the other). No vocabulary in
/// llama.cpp's `models/` says `pre = default` and has expected ids, so: mpt's vocabulary (the
/// same tokens, types and merges as `ggml-vocab-gpt-neox.gguf`) written again with
/// `pre = default`, against llama.cpp's ids on `ggml-vocab-gpt-neox.gguf`, which has no `pre`
/// and so is tokenized with `default` there (`ggml-vocab-gpt-neox.gguf.out`, see the README).
#[test]
fn default_pre_tokenizer_matches_llama_cpp() {
    let mpt = GgufFile::open(vocab_dir().join("ggml-vocab-mpt.gguf")).unwrap();
    let mut metadata: Vec<(String, Value)> = mpt.metadata().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    let mut spec = GgufSpec { version: 3, metadata, tensors: Vec::new() };
    spec.set("tokenizer.ggml.pre", Value::String("default".into()));
    let path = std::env::temp_dir().join(format!("cortexstream-vocab-default-pre-{}.gguf", std::process::id()));
    std::fs::write(&path, spec.to_bytes()).unwrap();
    let tokenizer = GgufFile::open(&path).and_then(|gguf| Tokenizer::from_gguf(&gguf));
    std::fs::remove_file(&path).unwrap();
    check_cases("gpt-neox", &tokenizer.unwrap());
}

/// Decoding what we encoded gives the text back (the SentencePiece space prefix removed again).
#[test]
fn encode_then_decode_round_trips_for_every_kind() {
    for kind in ["llama-spm", "phi-3", "gpt-2", "starcoder", "mpt", "llama-bpe", "qwen2"] {
        let tokenizer = load(kind);
        for (text, _) in cases(kind) {
            let ids = tokenizer.encode(&text, false).unwrap();
            assert_eq!(tokenizer.decode(&ids, true).unwrap(), text, "{kind}: {ids:?}");
        }
    }
}

#[test]
fn sentencepiece_adds_bos_and_reads_special_ids_from_metadata() {
    let tokenizer = load("llama-spm");
    assert_eq!(tokenizer.vocab_size(), 32000);
    assert_eq!((tokenizer.bos_token_id(), tokenizer.eos_token_id()), (Some(1), Some(2)));
    // tokenizer.ggml.add_bos_token = true, add_eos_token = false.
    let plain = tokenizer.encode("Hello world", false).unwrap();
    let with_bos = tokenizer.encode("Hello world", true).unwrap();
    assert_eq!(with_bos[0], 1);
    assert_eq!(&with_bos[1..], &plain[..]);
    assert_eq!(tokenizer.decode(&with_bos, true).unwrap(), "Hello world");
    assert_eq!(tokenizer.decode(&with_bos, false).unwrap(), "<s> Hello world");
    assert_eq!(tokenizer.end_of_generation_ids(), [2]);
}

#[test]
fn sentencepiece_token_bytes_are_exact() {
    let tokenizer = load("llama-spm");
    let bytes = |text: &str| tokenizer.token_bytes(tokenizer.token_to_id(text).unwrap()).unwrap().to_vec();
    assert_eq!(bytes("▁Hello"), b" Hello");
    assert_eq!(bytes("<0x0A>"), b"\n");
    assert_eq!(bytes("<0xE4>"), [0xE4]);
    assert_eq!(bytes("</s>"), b"</s>");
    assert!(tokenizer.is_special(2) && tokenizer.is_special(0) && !tokenizer.is_special(15043));
    // Byte fallback: a character outside the vocabulary becomes its UTF-8 bytes.
    let ids = tokenizer.encode("🦙", false).unwrap();
    let joined: Vec<u8> = ids.iter().flat_map(|&id| tokenizer.token_bytes(id).unwrap().to_vec()).collect();
    assert_eq!(joined, " 🦙".as_bytes());
}

/// Phi-3's chat tokens are control tokens: matched whole in a prompt, specials, and
/// `<|end|>` / `<|endoftext|>` end generation beside EOS.
#[test]
fn control_tokens_are_matched_whole_and_end_generation() {
    let tokenizer = load("phi-3");
    let end = tokenizer.token_to_id("<|end|>").unwrap();
    let user = tokenizer.token_to_id("<|user|>").unwrap();
    let ids = tokenizer.encode("<|user|>\nHi<|end|>", false).unwrap();
    assert_eq!(ids[0], user);
    assert_eq!(*ids.last().unwrap(), end);
    assert!(tokenizer.is_special(end));
    let eog = tokenizer.end_of_generation_ids();
    assert_eq!(eog[0], tokenizer.eos_token_id().unwrap());
    assert!(eog.contains(&end), "{eog:?}");
}

/// llama.cpp drops the whitespace after Phi-3's special tokens (the file's `general.name` is
/// `Phi3`), except after `<unk>`, `<s>` and `<|endoftext|>`; the text after them then starts a
/// new fragment with its space prefix. The ids are llama.cpp's (`llama-tokenize --no-bos` on
/// this file, the llama.cpp of the README).
#[test]
fn phi_3_special_tokens_strip_the_whitespace_after_them() {
    let tokenizer = load("phi-3");
    let encode = |text: &str| tokenizer.encode(text, false).unwrap();
    // <|user|> ▁Hi <|end|>: the newline and space after <|user|>, the newline after <|end|> gone.
    assert_eq!(encode("<|user|>\n Hi<|end|>\n"), [32010, 6324, 32007]);
    assert_eq!(encode("<|user|>\nHi"), [32010, 6324]);
    // `<s>` is exempt: <s> ▁ \n Hi.
    assert_eq!(encode("<s>\nHi"), [1, 29871, 13, 18567]);
}

/// `mpt` (GPT-NeoX's vocabulary) uses the GPT-2 regex in llama.cpp; its 178 user-defined
/// tokens (runs of spaces) are matched whole before BPE.
#[test]
fn mpt_with_user_defined_tokens_matches_llama_cpp() {
    check_vocab("mpt");
}
