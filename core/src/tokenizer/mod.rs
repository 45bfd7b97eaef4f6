//! Text ⇄ token ids.
//!
//! [`Tokenizer`] is built from GGUF metadata (`tokenizer.ggml.*`: byte-level BPE with the
//! pre-tokenizer named by `tokenizer.ggml.pre`, in [`bpe`], or SentencePiece, in [`spm`]) or from
//! a HuggingFace `tokenizer.json`, and precomputes the per-token tables the step loop reads on
//! every token: the exact bytes each token contributes to the output (for the incremental
//! detokenizer), which ids are special, and which ids end generation.

mod bpe;
mod spm;

use std::collections::HashMap;
use std::path::Path;

use tokenizers::decoders::DecoderWrapper;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};

use bpe::PreTokenizer;
use spm::{PieceKind, SentencePiece, SPACE_MARKER};

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;
const TOKEN_TYPE_BYTE: i64 = 6;

/// Token texts that end a turn in the chat formats we know of. They end generation when the
/// vocabulary has them as special tokens (llama.cpp keeps a similar list for its EOG set).
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|end|>",
    "<EOT>",
];

/// BOS / EOS spellings tried, in order, when a tokenizer.json comes without a
/// tokenizer_config.json that names them.
const KNOWN_BOS_TOKENS: &[&str] = &["<|begin_of_text|>", "<s>", "<bos>"];
const KNOWN_EOS_TOKENS: &[&str] = &["<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>"];

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

/// What turns text into ids and back.
enum Backend {
    /// A `tokenizers::Tokenizer`: byte-level BPE from GGUF metadata, or a tokenizer.json.
    /// (Boxed: it is large, and the enum lives once per model.)
    Hf(Box<tokenizers::Tokenizer>),
    /// Our SentencePiece encoder (llama.cpp's algorithm); decoding uses the token byte table.
    SentencePiece(SentencePiece),
}

/// The special token ids a model file names.
#[derive(Debug, Clone, Copy, Default)]
struct SpecialIds {
    bos: Option<u32>,
    eos: Option<u32>,
    /// End of turn (`tokenizer.ggml.eot_token_id`), e.g. `<|eot_id|>`.
    eot: Option<u32>,
    /// End of message (`tokenizer.ggml.eom_token_id`), e.g. Llama 3.1's `<|eom_id|>`.
    eom: Option<u32>,
}

/// Whether encoding with special tokens adds BOS in front and EOS at the end.
#[derive(Debug, Clone, Copy, Default)]
struct AddSpecial {
    bos: bool,
    eos: bool,
}

/// A loaded tokenizer plus per-token tables. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Tokenizer {
    backend: Backend,
    /// Indexed by token id; `None` for ids the vocabulary skips.
    entries: Vec<Option<TokenEntry>>,
    specials: SpecialIds,
    /// BOS/EOS added when encoding with special tokens. Set only for GGUF-built tokenizers
    /// whose metadata asks for it; a tokenizer.json adds its own through its post-processor.
    add_special: AddSpecial,
    end_of_generation: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("specials", &self.specials)
            .field("add_special", &self.add_special)
            .field("end_of_generation", &self.end_of_generation)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from GGUF metadata (`tokenizer.ggml.*`), as llama.cpp reads it.
    ///
    /// Supported models: `gpt2` (byte-level BPE; `tokenizer.ggml.pre` must name a pre-tokenizer
    /// we implement, see [`bpe`]) and `llama` (SentencePiece with scores and byte fallback,
    /// `tokenizer.ggml.add_space_prefix`). Anything else fails with [`Error::ModelLoad`] naming
    /// the file, the key and the value: a wrong guess would tokenize silently wrong. (A
    /// tokenizer.json next to the model is used instead of the metadata; see the engine.)
    ///
    /// BOS/EOS/EOT/EOM ids come from `tokenizer.ggml.{bos,eos,eot,eom}_token_id`;
    /// `tokenizer.ggml.add_bos_token` / `add_eos_token` say whether encoding with special
    /// tokens adds them, with llama.cpp's defaults when absent (SentencePiece and Llama 3 add
    /// BOS, others do not; none adds EOS).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let model = gguf.require_str("tokenizer.ggml.model")?;
        match model {
            "gpt2" => Self::byte_level_bpe_from_gguf(gguf),
            "llama" => Self::sentencepiece_from_gguf(gguf),
            _ => Err(Error::model_load(
                gguf.path(),
                format!(
                    "unsupported tokenizer model `{model}` in `tokenizer.ggml.model` \
                     (supported: `gpt2`, byte-level BPE, and `llama`, SentencePiece)"
                ),
            )),
        }
    }

    fn byte_level_bpe_from_gguf(gguf: &GgufFile) -> Result<Self> {
        let tokens = string_array(gguf, "tokenizer.ggml.tokens")?;
        let token_types = token_types(gguf, tokens.len())?;
        let pre = pre_tokenizer(gguf)?;
        let inner = bpe::build(gguf, &tokens, &token_types, pre)?;
        let add_special = AddSpecial {
            bos: optional_bool(gguf, "tokenizer.ggml.add_bos_token")?.unwrap_or(pre.adds_bos_by_default()),
            eos: optional_bool(gguf, "tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        };
        let entries = hf_entries(&inner, TokenTextScheme::ByteLevel);
        Self::assemble(Backend::Hf(Box::new(inner)), entries, gguf_special_ids(gguf)?, add_special)
            .validated(gguf.path())
    }

    fn sentencepiece_from_gguf(gguf: &GgufFile) -> Result<Self> {
        let tokens = string_array(gguf, "tokenizer.ggml.tokens")?;
        let token_types = token_types(gguf, tokens.len())?;
        let scores = scores(gguf, tokens.len())?;
        // llama.cpp's SentencePiece defaults: a space prefix (Llama 2; Gemma's file says false),
        // BOS added, BOS = 1 and EOS = 2 unless the file names others.
        let add_space_prefix = optional_bool(gguf, "tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
        let add_special = AddSpecial {
            bos: optional_bool(gguf, "tokenizer.ggml.add_bos_token")?.unwrap_or(true),
            eos: optional_bool(gguf, "tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        };
        let mut specials = gguf_special_ids(gguf)?;
        let default_id = |id: u32| Some(id).filter(|&id| (id as usize) < tokens.len());
        specials.bos = specials.bos.or_else(|| default_id(1));
        specials.eos = specials.eos.or_else(|| default_id(2));

        // llama.cpp renames empty entries so that every text is distinct and non-empty.
        let texts: Vec<String> = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| if t.is_empty() { format!("[EMPTY_{id}]") } else { (*t).to_owned() })
            .collect();
        let type_of = |id: usize| token_types.get(id).copied().unwrap_or(1);
        let entries = texts.iter().enumerate().map(|(id, text)| Some(sentencepiece_entry(text, type_of(id)))).collect();
        let strips_space = strips_space_after_specials(gguf);
        let kinds: Vec<PieceKind> = texts
            .iter()
            .enumerate()
            .map(|(id, text)| sentencepiece_kind(type_of(id), strips_space && !keeps_space_after(text)))
            .collect();
        let encoder = SentencePiece::new(&texts, scores, &kinds, add_space_prefix)
            .map_err(|e| Error::model_load(gguf.path(), e.to_string()))?;
        Self::assemble(Backend::SentencePiece(encoder), entries, specials, add_special).validated(gguf.path())
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
        let specials = match gguf {
            Some(gguf) => gguf_special_ids(gguf)?,
            None => {
                let (bos, eos) = special_ids_next_to(path, &inner)?;
                SpecialIds { bos, eos, ..SpecialIds::default() }
            }
        };
        let entries = hf_entries(&inner, scheme);
        Self::assemble(Backend::Hf(Box::new(inner)), entries, specials, AddSpecial::default()).validated(path)
    }

    /// Puts the parts together and derives the end-of-generation set: EOS, EOT and EOM as the
    /// file names them, then the known end-of-turn tokens the vocabulary has as specials.
    fn assemble(
        backend: Backend,
        entries: Vec<Option<TokenEntry>>,
        specials: SpecialIds,
        add_special: AddSpecial,
    ) -> Self {
        let mut tokenizer = Self { backend, entries, specials, add_special, end_of_generation: Vec::new() };
        let named = [specials.eos, specials.eot, specials.eom].into_iter().flatten();
        let by_text = END_OF_TURN_TOKENS
            .iter()
            .filter_map(|&name| tokenizer.token_to_id(name))
            .filter(|&id| tokenizer.is_special(id));
        let mut end_of_generation: Vec<u32> = Vec::new();
        for id in named.chain(by_text) {
            if !end_of_generation.contains(&id) {
                end_of_generation.push(id);
            }
        }
        tokenizer.end_of_generation = end_of_generation;
        tokenizer
    }

    /// Fails when the model file names a special id the vocabulary does not have, or asks
    /// for BOS/EOS to be added without naming them.
    fn validated(self, path: &Path) -> Result<Self> {
        let SpecialIds { bos, eos, eot, eom } = self.specials;
        for (name, id) in [("BOS", bos), ("EOS", eos), ("EOT", eot), ("EOM", eom)] {
            if let Some(id) = id.filter(|&id| self.entry(id).is_none()) {
                return Err(Error::model_load(
                    path,
                    format!("{name} token id {id} is not in the vocabulary (size {})", self.vocab_size()),
                ));
            }
        }
        for (wanted, id, add_key, id_key) in [
            (self.add_special.bos, bos, "tokenizer.ggml.add_bos_token", "tokenizer.ggml.bos_token_id"),
            (self.add_special.eos, eos, "tokenizer.ggml.add_eos_token", "tokenizer.ggml.eos_token_id"),
        ] {
            if wanted && id.is_none() {
                return Err(Error::model_load(
                    path,
                    format!("`{add_key}` is true (or defaults to true) but the file has no `{id_key}`"),
                ));
            }
        }
        Ok(self)
    }

    /// Encodes `text`. Special tokens written literally (e.g. `<|im_start|>`) are recognised as
    /// specials, as rendered chat templates need. With `add_special_tokens`, BOS (and EOS) are
    /// added when the model asks for it (`tokenizer.ggml.add_bos_token` / `add_eos_token`, or a
    /// tokenizer.json's post-processor).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let mut ids = match &self.backend {
            Backend::Hf(inner) => inner
                .encode_fast(text, add_special_tokens)
                .map_err(|e| Error::Tokenizer(e.to_string()))?
                .get_ids()
                .to_vec(),
            Backend::SentencePiece(encoder) => encoder.encode(text)?,
        };
        if add_special_tokens {
            if let Some(bos) = self.specials.bos.filter(|_| self.add_special.bos) {
                ids.insert(0, bos);
            }
            if let Some(eos) = self.specials.eos.filter(|_| self.add_special.eos) {
                ids.push(eos);
            }
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
        match &self.backend {
            Backend::Hf(inner) => inner.decode(ids, skip_special_tokens).map_err(|e| Error::Tokenizer(e.to_string())),
            Backend::SentencePiece(encoder) => {
                Ok(self.decode_sentencepiece(ids, skip_special_tokens, encoder.adds_space_prefix()))
            }
        }
    }

    /// SentencePiece decoding: the tokens' bytes, without the space the encoder prefixed
    /// (one leading space of the first text token, when the output is still empty there).
    fn decode_sentencepiece(&self, ids: &[u32], skip_special_tokens: bool, strip_prefix: bool) -> String {
        let mut bytes = Vec::new();
        // Only the very first piece written can carry the prefix (`▁` alone decodes to nothing).
        let mut at_start = true;
        for &id in ids {
            let Some(entry) = self.entry(id) else { continue };
            if entry.special && skip_special_tokens {
                continue;
            }
            let piece: &[u8] = &entry.bytes;
            let piece = match piece.strip_prefix(b" ") {
                Some(rest) if strip_prefix && at_start && !entry.special => rest,
                _ => piece,
            };
            bytes.extend_from_slice(piece);
            at_start = false;
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The exact bytes token `id` contributes to the output text: byte-level tokens mapped back
    /// through the GPT-2 byte table (possibly an incomplete UTF-8 sequence), SentencePiece
    /// tokens with `▁` as a space and `<0xAB>` as one byte, special tokens as their literal
    /// text. Precomputed at load for the incremental detokenizer.
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
        self.specials.bos
    }

    /// The end-of-sequence id, if the model has one.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.specials.eos
    }

    /// Every id that ends generation: EOS, the EOT/EOM ids the model file names, and the
    /// end-of-turn tokens the vocabulary has as specials (`<|im_end|>`, `<|eot_id|>`,
    /// `<|endoftext|>`, `<end_of_turn>`, ...). EOS first.
    pub fn end_of_generation_ids(&self) -> &[u32] {
        &self.end_of_generation
    }

    /// The id of a vocabulary entry, written as it is stored (byte-level: `Ġthe`, not ` the`;
    /// SentencePiece: `▁the`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.backend {
            Backend::Hf(inner) => inner.token_to_id(token),
            Backend::SentencePiece(encoder) => encoder.token_to_id(token),
        }
    }

    /// The stored text of vocabulary entry `id` (byte-level: `Ġthe`, not ` the`).
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.entry(id).map(|e| e.text.as_str())
    }

    fn entry(&self, id: u32) -> Option<&TokenEntry> {
        self.entries.get(id as usize).and_then(Option::as_ref)
    }
}

/// The per-id table of a `tokenizers::Tokenizer`.
fn hf_entries(inner: &tokenizers::Tokenizer, scheme: TokenTextScheme) -> Vec<Option<TokenEntry>> {
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
    entries
}

/// A SentencePiece entry as llama.cpp renders it: byte tokens as their byte, control and
/// user-defined tokens as their text, the rest with `▁` as a space. Control and unknown
/// tokens are special.
fn sentencepiece_entry(text: &str, token_type: i64) -> TokenEntry {
    let bytes: Box<[u8]> = match token_type {
        TOKEN_TYPE_BYTE => literal_bytes(text),
        TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED | TOKEN_TYPE_UNKNOWN => text.as_bytes().into(),
        _ => text.replace(SPACE_MARKER, " ").into_bytes().into_boxed_slice(),
    };
    let special = matches!(token_type, TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN);
    TokenEntry { text: text.to_owned(), bytes, special }
}

/// Which entries the SentencePiece encoder matches whole before merging (llama.cpp's special
/// token cache: control, user-defined and unknown entries), and whether they drop the
/// whitespace after them.
fn sentencepiece_kind(token_type: i64, strips_space_after: bool) -> PieceKind {
    match token_type {
        TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED | TOKEN_TYPE_UNKNOWN if strips_space_after => {
            PieceKind::WholeStripsSpaceAfter
        }
        TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED | TOKEN_TYPE_UNKNOWN => PieceKind::Whole,
        1 => PieceKind::Normal,
        _ => PieceKind::Other,
    }
}

/// Whether llama.cpp strips the whitespace after this model's special tokens: it does for
/// Phi-3, recognised by `general.name` (lowercased) containing `phi-3` or `phi3`
/// (`LLAMA_TOKEN_ATTR_RSTRIP` in `llama-vocab.cpp`). So `<|user|>\nHi` is `<|user|>` + `Hi`.
fn strips_space_after_specials(gguf: &GgufFile) -> bool {
    let name = gguf.get("general.name").and_then(Value::as_str).unwrap_or_default().to_lowercase();
    name.contains("phi-3") || name.contains("phi3")
}

/// The special tokens llama.cpp exempts from Phi-3's whitespace stripping.
fn keeps_space_after(text: &str) -> bool {
    matches!(text, "<unk>" | "<s>" | "<|endoftext|>")
}

/// The pre-tokenizer `tokenizer.ggml.pre` names; missing or unknown fails the load.
fn pre_tokenizer(gguf: &GgufFile) -> Result<PreTokenizer> {
    const KEY: &str = "tokenizer.ggml.pre";
    let remedy = "put the model's tokenizer.json next to the GGUF file to tokenize with it instead";
    let Some(value) = gguf.get(KEY) else {
        return Err(Error::model_load(
            gguf.path(),
            format!(
                "missing metadata `{KEY}`: a byte-level BPE vocabulary needs it to split text as the model \
                 was trained (supported: {}); {remedy}",
                bpe::SUPPORTED_PRE
            ),
        ));
    };
    let name = value.as_str().ok_or_else(|| gguf.wrong_type(KEY, "a string", value))?;
    PreTokenizer::from_name(name).ok_or_else(|| {
        Error::model_load(
            gguf.path(),
            format!("unsupported pre-tokenizer `{name}` in `{KEY}` (supported: {}); {remedy}", bpe::SUPPORTED_PRE),
        )
    })
}

/// `tokenizer.ggml.token_type`, one per token, or empty when the file has none.
fn token_types(gguf: &GgufFile, token_count: usize) -> Result<Vec<i64>> {
    const KEY: &str = "tokenizer.ggml.token_type";
    let Some(value) = gguf.get(KEY) else { return Ok(Vec::new()) };
    let types = integer_array(gguf, KEY, value)?;
    if types.len() != token_count {
        return Err(Error::model_load(
            gguf.path(),
            format!("{} token types for {token_count} tokens in `{KEY}`", types.len()),
        ));
    }
    Ok(types)
}

/// `tokenizer.ggml.scores`, one per token; all zero when the file has none (as in llama.cpp).
fn scores(gguf: &GgufFile, token_count: usize) -> Result<Vec<f32>> {
    const KEY: &str = "tokenizer.ggml.scores";
    let Some(value) = gguf.get(KEY) else { return Ok(vec![0.0; token_count]) };
    let items = value.as_array().ok_or_else(|| gguf.wrong_type(KEY, "an array of floats", value))?;
    let scores = items
        .iter()
        .map(|v| match v {
            Value::F32(score) => Ok(*score),
            other => Err(bad_item(gguf, KEY, "32-bit floats", other)),
        })
        .collect::<Result<Vec<f32>>>()?;
    if scores.len() != token_count {
        return Err(Error::model_load(
            gguf.path(),
            format!("{} scores for {token_count} tokens in `{KEY}`", scores.len()),
        ));
    }
    Ok(scores)
}

/// A boolean metadata value if present; a value of another type is a load error naming the key.
fn optional_bool(gguf: &GgufFile, key: &str) -> Result<Option<bool>> {
    gguf.get(key).map(|value| value.as_bool().ok_or_else(|| gguf.wrong_type(key, "a boolean", value))).transpose()
}

/// The special ids a GGUF names. A value that is not a token id is a load error naming the key.
fn gguf_special_ids(gguf: &GgufFile) -> Result<SpecialIds> {
    let id = |key: &str| -> Result<Option<u32>> {
        gguf.get(key)
            .map(|value| {
                value
                    .as_u64()
                    .and_then(|id| u32::try_from(id).ok())
                    .ok_or_else(|| gguf.wrong_type(key, "a token id (a non-negative 32-bit integer)", value))
            })
            .transpose()
    };
    Ok(SpecialIds {
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        eot: id("tokenizer.ggml.eot_token_id")?,
        eom: id("tokenizer.ggml.eom_token_id")?,
    })
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
