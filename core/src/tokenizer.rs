//! Text ⇄ token ids.
//!
//! [`Tokenizer`] wraps a `tokenizers::Tokenizer`, built either from GGUF metadata
//! (`tokenizer.ggml.*`) or from a HuggingFace `tokenizer.json`, and precomputes the per-token
//! tables the step loop reads on every token: the exact bytes each token contributes to the
//! output (for the incremental detokenizer), which ids are special, and which ids end
//! generation.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Token texts that end a turn in the chat formats we know of. They end generation when the
/// vocabulary has them as special tokens (llama.cpp keeps a similar list for its EOG set).
const END_OF_TURN_TOKENS: &[&str] =
    &["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|endoftext|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>"];

/// BOS / EOS spellings tried, in order, when a tokenizer.json comes without a
/// tokenizer_config.json that names them.
const KNOWN_BOS_TOKENS: &[&str] = &["<|begin_of_text|>", "<s>", "<bos>"];
const KNOWN_EOS_TOKENS: &[&str] = &["<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>"];

/// Pre-tokenizer split regexes of llama.cpp's `llama-vocab.cpp`, applied before the byte-level
/// mapping (which then runs without its own GPT-2 regex).
const LLAMA3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a vocabulary entry's text maps back to output bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenTextScheme {
    /// GPT-2 byte-level BPE: every character stands for one byte (`Ġ` is a space).
    ByteLevel,
    /// Any other vocabulary, read SentencePiece-style: `▁` is a space and `<0xAB>` is one
    /// raw byte; everything else is its own UTF-8 text. (WordPiece's `##` joins are not undone:
    /// only generation, not the BERT embedder, streams token bytes.)
    Literal,
}

/// One vocabulary entry with everything the step loop asks about it.
#[derive(Debug)]
struct TokenEntry {
    text: String,
    bytes: Box<[u8]>,
    special: bool,
}

/// A loaded tokenizer plus per-token tables. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Indexed by token id; `None` for ids the vocabulary skips.
    entries: Vec<Option<TokenEntry>>,
    bos: Option<u32>,
    eos: Option<u32>,
    /// BOS id to prepend when encoding with special tokens. Set only for GGUF-built tokenizers
    /// whose metadata asks for it; a tokenizer.json adds its own through its post-processor.
    prepend_bos: Option<u32>,
    end_of_generation: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("end_of_generation", &self.end_of_generation)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from GGUF metadata (`tokenizer.ggml.*`).
    ///
    /// Supported: model `gpt2` (byte-level BPE). Every other model type fails with
    /// [`Error::ModelLoad`] naming the file and the type. The construction mirrors the
    /// HuggingFace tokenizer.json the GGUF was converted from: BPE over `tokens` + `merges`
    /// without byte fallback, the pre-tokenizer chosen by `tokenizer.ggml.pre`, a byte-level
    /// decoder, CONTROL tokens as special added tokens and USER_DEFINED ones as plain added tokens.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let path = gguf.path();
        let model = gguf.require_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(Error::model_load(
                path,
                format!("unsupported tokenizer model `{model}` (only `gpt2`, byte-level BPE, is supported)"),
            ));
        }
        let tokens = string_array(gguf, "tokenizer.ggml.tokens")?;
        let merges = string_array(gguf, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|merge| {
                merge
                    .split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| Error::model_load(path, format!("malformed BPE merge `{merge}`")))
            })
            .collect::<Result<Vec<_>>>()?;
        let token_types = match gguf.get("tokenizer.ggml.token_type") {
            Some(value) => integer_array(gguf, "tokenizer.ggml.token_type", value)?,
            None => Vec::new(),
        };
        if !token_types.is_empty() && token_types.len() != tokens.len() {
            return Err(Error::model_load(
                path,
                format!("{} token types for {} tokens in `tokenizer.ggml.token_type`", token_types.len(), tokens.len()),
            ));
        }

        let vocab: Vocab = tokens.iter().enumerate().map(|(id, t)| (t.to_string(), id as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| Error::model_load(path, format!("cannot build the BPE tokenizer: {e}")))?;
        let pre = gguf.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner
            .with_pre_tokenizer(Some(byte_level_pre_tokenizer(pre).map_err(|e| Error::model_load(path, e))?))
            .with_decoder(Some(ByteLevel::new(false, false, true)));

        let added = |wanted: i64, special: bool| -> Vec<AddedToken> {
            tokens
                .iter()
                .zip(&token_types)
                .filter(|&(_, &ty)| ty == wanted)
                .map(|(&t, _)| AddedToken::from(t, special))
                .collect()
        };
        inner.add_special_tokens(&added(TOKEN_TYPE_CONTROL, true));
        inner.add_tokens(&added(TOKEN_TYPE_USER_DEFINED, false));

        let (bos, eos) = gguf_bos_eos(gguf);
        // llama.cpp's default for BPE vocabularies when the key is missing is "don't add".
        let add_bos = gguf.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(false);
        Self::with_tables(inner, TokenTextScheme::ByteLevel, bos, eos, bos.filter(|_| add_bos)).validated(path)
    }

    /// Loads a HuggingFace `tokenizer.json` (used when one sits next to the model, and by the
    /// embedder).
    ///
    /// BOS/EOS ids come from the GGUF when given, else from a `tokenizer_config.json` next to
    /// the file, else from well-known special token spellings. BOS is added on encode by the
    /// file's own post-processor (as in Python `tokenizers`). Padding and truncation configured
    /// in the file are switched off: callers get exactly the tokens of their text and decide
    /// themselves what to do with long inputs.
    pub fn from_tokenizer_json(path: &Path, gguf: Option<&GgufFile>) -> Result<Self> {
        let mut inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::model_load(path, e.to_string()))?;
        inner
            .with_padding(None)
            .with_truncation(None)
            .map_err(|e| Error::model_load(path, format!("cannot disable truncation: {e}")))?;
        let scheme = if inner.get_decoder().is_some_and(is_byte_level) {
            TokenTextScheme::ByteLevel
        } else {
            TokenTextScheme::Literal
        };
        let (bos, eos) = match gguf {
            Some(gguf) => gguf_bos_eos(gguf),
            None => special_ids_next_to(path, &inner)?,
        };
        Self::with_tables(inner, scheme, bos, eos, None).validated(path)
    }

    /// Precomputes the per-id tables shared by both constructors.
    fn with_tables(
        inner: tokenizers::Tokenizer,
        scheme: TokenTextScheme,
        bos: Option<u32>,
        eos: Option<u32>,
        prepend_bos: Option<u32>,
    ) -> Self {
        let vocab = inner.get_vocab(true);
        let added = inner.get_added_tokens_decoder();
        let size = vocab.values().max().map_or(0, |&max| max as usize + 1);
        let byte_of_char = (scheme == TokenTextScheme::ByteLevel).then(gpt2_char_to_byte);
        let mut entries: Vec<Option<TokenEntry>> = (0..size).map(|_| None).collect();
        for (text, id) in vocab {
            let special = added.get(&id).is_some_and(|token| token.special);
            let bytes = match &byte_of_char {
                _ if special => text.as_bytes().into(),
                Some(table) => byte_level_bytes(&text, table),
                None => literal_bytes(&text),
            };
            entries[id as usize] = Some(TokenEntry { text, bytes, special });
        }
        let is_special = |id: u32| entries.get(id as usize).and_then(Option::as_ref).is_some_and(|e| e.special);
        let mut end_of_generation: Vec<u32> = eos.into_iter().collect();
        for &name in END_OF_TURN_TOKENS {
            if let Some(id) = inner.token_to_id(name).filter(|&id| is_special(id) && Some(id) != eos) {
                end_of_generation.push(id);
            }
        }
        Self { inner, entries, bos, eos, prepend_bos, end_of_generation }
    }

    /// Fails when the model file names a BOS/EOS id the vocabulary does not have.
    fn validated(self, path: &Path) -> Result<Self> {
        for (name, id) in [("BOS", self.bos), ("EOS", self.eos)] {
            if let Some(id) = id.filter(|&id| self.entry(id).is_none()) {
                return Err(Error::model_load(
                    path,
                    format!("{name} token id {id} is not in the vocabulary (size {})", self.vocab_size()),
                ));
            }
        }
        Ok(self)
    }

    /// Encodes `text`. Special tokens written literally (e.g. `<|im_start|>`) are recognised as
    /// specials, as rendered chat templates need. With `add_special_tokens`, BOS is added when
    /// the model asks for it (`tokenizer.ggml.add_bos_token`, or a tokenizer.json's post-processor).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self.inner.encode_fast(text, add_special_tokens).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids = encoding.get_ids().to_vec();
        if let Some(bos) = self.prepend_bos.filter(|_| add_special_tokens) {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Decodes `ids` to text; invalid UTF-8 (e.g. half a character) becomes U+FFFD.
    /// An id outside the vocabulary is an [`Error::InvalidRequest`] on `token_ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| self.entry(id).is_none()) {
            return Err(Error::invalid(
                "token_ids",
                format!("token id {bad} is not in the vocabulary (size {})", self.vocab_size()),
            ));
        }
        self.inner.decode(ids, skip_special_tokens).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The exact bytes token `id` contributes to the output text: byte-level tokens mapped back
    /// through the GPT-2 byte table (possibly an incomplete UTF-8 sequence), special tokens as
    /// their literal text. Precomputed at load for the incremental detokenizer.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.entry(id).map(|e| &*e.bytes)
    }

    /// Whether `id` is a special (control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.entry(id).is_some_and(|e| e.special)
    }

    /// Number of ids, i.e. one more than the largest id (the logits width).
    pub fn vocab_size(&self) -> usize {
        self.entries.len()
    }

    /// The beginning-of-sequence id, if the model has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence id, if the model has one.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos
    }

    /// Every id that ends generation: EOS plus the end-of-turn tokens the vocabulary has as
    /// specials (`<|im_end|>`, `<|eot_id|>`, `<|endoftext|>`, `<end_of_turn>`, ...). EOS first.
    pub fn end_of_generation_ids(&self) -> &[u32] {
        &self.end_of_generation
    }

    /// The id of a vocabulary entry, written as it is stored (byte-level: `Ġthe`, not ` the`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The stored text of vocabulary entry `id` (byte-level: `Ġthe`, not ` the`).
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.entry(id).map(|e| e.text.as_str())
    }

    fn entry(&self, id: u32) -> Option<&TokenEntry> {
        self.entries.get(id as usize).and_then(Option::as_ref)
    }
}

/// The pre-tokenizer for a byte-level BPE vocabulary, chosen by GGUF `tokenizer.ggml.pre`.
///
/// Verified against llama.cpp's tokenization: `smollm` (digits one by one, then the GPT-2
/// regex). `llama-bpe`/`llama3` and `qwen2` use llama.cpp's split regexes but are not verified
/// here (no such model in the test set). Everything else (`gpt-2`, `default`, unknown names)
/// gets the plain GPT-2 regex.
fn byte_level_pre_tokenizer(pre: &str) -> std::result::Result<PreTokenizerWrapper, String> {
    let byte_level = |use_regex: bool| -> PreTokenizerWrapper { ByteLevel::new(false, false, use_regex).into() };
    let split_then_bytes = |regex: &str| -> std::result::Result<PreTokenizerWrapper, String> {
        let split = Split::new(SplitPattern::Regex(regex.to_owned()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| format!("cannot compile the `{pre}` pre-tokenizer regex: {e}"))?;
        Ok(Sequence::new(vec![split.into(), byte_level(false)]).into())
    };
    match pre {
        "smollm" => Ok(Sequence::new(vec![Digits::new(true).into(), byte_level(true)]).into()),
        "llama-bpe" | "llama3" => split_then_bytes(LLAMA3_SPLIT_REGEX),
        "qwen2" => split_then_bytes(QWEN2_SPLIT_REGEX),
        _ => Ok(byte_level(true)),
    }
}

/// The BOS and EOS ids a GGUF names, if any.
fn gguf_bos_eos(gguf: &GgufFile) -> (Option<u32>, Option<u32>) {
    let id = |key: &str| gguf.get(key).and_then(Value::as_u64).and_then(|id| u32::try_from(id).ok());
    (id("tokenizer.ggml.bos_token_id"), id("tokenizer.ggml.eos_token_id"))
}

/// A GGUF metadata array of strings, or a load error naming the key.
fn string_array<'a>(gguf: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let values = gguf.get(key).ok_or_else(|| Error::model_load(gguf.path(), format!("missing metadata `{key}`")))?;
    let items = values.as_array().ok_or_else(|| gguf.wrong_type(key, "an array of strings", values))?;
    items.iter().map(|v| v.as_str().ok_or_else(|| bad_item(gguf, key, "strings", v))).collect()
}

/// A GGUF metadata array of integers, or a load error naming the key.
fn integer_array(gguf: &GgufFile, key: &str, value: &Value) -> Result<Vec<i64>> {
    let items = value.as_array().ok_or_else(|| gguf.wrong_type(key, "an array of integers", value))?;
    items.iter().map(|v| v.as_i64().ok_or_else(|| bad_item(gguf, key, "integers", v))).collect()
}

fn bad_item(gguf: &GgufFile, key: &str, kind: &str, item: &Value) -> Error {
    Error::model_load(
        gguf.path(),
        format!("metadata `{key}` must be an array of {kind}, but holds {}", item.describe()),
    )
}

/// Whether a tokenizer.json decoder is (or contains) the byte-level decoder.
fn is_byte_level(decoder: &DecoderWrapper) -> bool {
    match decoder {
        DecoderWrapper::ByteLevel(_) => true,
        DecoderWrapper::Sequence(seq) => seq.get_decoders().iter().any(is_byte_level),
        _ => false,
    }
}

/// BOS/EOS ids for a tokenizer.json: named in the `tokenizer_config.json` beside it when there
/// is one, else the first well-known spelling that is a special token.
fn special_ids_next_to(path: &Path, inner: &tokenizers::Tokenizer) -> Result<(Option<u32>, Option<u32>)> {
    let config_path = path.with_file_name("tokenizer_config.json");
    let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| Error::model_load(&config_path, e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Value::Null,
        Err(source) => return Err(Error::Io { path: config_path, source }),
    };
    let added = inner.get_added_tokens_decoder();
    let lookup = |key: &str, known: &[&str]| -> Option<u32> {
        // The config spells a token either as a string or as an AddedToken object.
        let configured = config.get(key).and_then(|v| v.as_str().or_else(|| v.get("content")?.as_str()));
        match configured {
            Some(name) => inner.token_to_id(name),
            None => known
                .iter()
                .filter_map(|name| inner.token_to_id(name))
                .find(|id| added.get(id).is_some_and(|t| t.special)),
        }
    };
    Ok((lookup("bos_token", KNOWN_BOS_TOKENS), lookup("eos_token", KNOWN_EOS_TOKENS)))
}

/// GPT-2's byte ↔ character table, inverted: index a character's code point to get the byte
/// it stands for. Printable bytes stand for themselves; the other 68 bytes are shifted to
/// U+0100.. in byte order (https://github.com/openai/gpt-2/blob/master/src/encoder.py).
fn gpt2_char_to_byte() -> HashMap<char, u8> {
    let stands_for_itself = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut shifted = 0u32;
    (0..=255u8)
        .map(|b| {
            let c = if stands_for_itself(b) {
                char::from(b)
            } else {
                shifted += 1;
                char::from_u32(0x100 + shifted - 1).expect("U+0100..U+0143 are valid chars")
            };
            (c, b)
        })
        .collect()
}

/// The bytes of a byte-level token. A token with a character outside the table (which the
/// byte-level decoder also passes through unchanged) is taken as its own UTF-8 text.
fn byte_level_bytes(text: &str, byte_of_char: &HashMap<char, u8>) -> Box<[u8]> {
    text.chars()
        .map(|c| byte_of_char.get(&c).copied())
        .collect::<Option<Vec<u8>>>()
        .map_or_else(|| text.as_bytes().into(), Vec::into_boxed_slice)
}

/// The bytes of a SentencePiece-style token: `<0xAB>` is one raw byte, `▁` is a space.
fn literal_bytes(text: &str) -> Box<[u8]> {
    let raw_byte = text
        .strip_prefix("<0x")
        .and_then(|rest| rest.strip_suffix('>'))
        .filter(|hex| hex.len() == 2)
        .and_then(|hex| u8::from_str_radix(hex, 16).ok());
    match raw_byte {
        Some(byte) => Box::new([byte]),
        None => text.replace('\u{2581}', " ").into_bytes().into_boxed_slice(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_table_covers_every_byte_once() {
        let table = gpt2_char_to_byte();
        assert_eq!(table.len(), 256);
        let mut bytes: Vec<u8> = table.values().copied().collect();
        bytes.sort_unstable();
        assert_eq!(bytes, (0..=255u8).collect::<Vec<_>>());
    }

    #[test]
    fn gpt2_table_matches_known_characters() {
        let table = gpt2_char_to_byte();
        // The well-known stand-ins: Ġ is the space, Ċ the newline, Ā the NUL byte.
        assert_eq!(table[&'Ġ'], b' ');
        assert_eq!(table[&'Ċ'], b'\n');
        assert_eq!(table[&'Ā'], 0);
        assert_eq!(table[&'a'], b'a');
        assert_eq!(table[&'é'], 0xE9);
        // "你" is E4 BD A0; 0xA0 is not printable and becomes 'ł' (U+0142).
        assert_eq!(&*byte_level_bytes("Ġä½ł", &table), " 你".as_bytes());
        assert_eq!(&*byte_level_bytes("Ġä", &table), &[b' ', 0xE4]);
    }

    #[test]
    fn literal_tokens_map_sentencepiece_conventions() {
        assert_eq!(&*literal_bytes("<0x0A>"), b"\n");
        assert_eq!(&*literal_bytes("<0xE4>"), &[0xE4]);
        assert_eq!(&*literal_bytes("\u{2581}Hello"), b" Hello");
        assert_eq!(&*literal_bytes("<0xZZ>"), b"<0xZZ>");
        assert_eq!(&*literal_bytes("##ing"), b"##ing");
    }
}
