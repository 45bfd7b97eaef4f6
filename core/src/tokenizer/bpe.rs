//! Byte-level BPE from GGUF metadata (`tokenizer.ggml.model = gpt2`), built as a
//! `tokenizers::Tokenizer` with the pre-tokenizer llama.cpp uses for the file's
//! `tokenizer.ggml.pre`.

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::{TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// Pre-tokenizer split regexes of llama.cpp's `llama-vocab.cpp`, applied before the byte-level
/// mapping (which then runs without its own GPT-2 regex). The contractions are spelled out
/// (`'[sS]`) rather than `(?i:'s)`: Unicode case folding would also match `'ſ` and the Kelvin sign.
const LLAMA3_SPLIT_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp's `default` pre-tokenizer: these regexes one after the other, each splitting the
/// pieces the previous one left (matches and the text between them both become pieces).
const DEFAULT_SPLIT_REGEXES: &[&str] = &[
    r"[\p{P}\$\+<=>\^~\|]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// The `tokenizer.ggml.pre` values this module knows, for error messages.
pub(super) const SUPPORTED_PRE: &str =
    "`llama-bpe` (`llama3`, `llama-v3`), `qwen2`, `smollm`, `starcoder`, `gpt-2` (`gpt2`), `mpt`, `default`";

/// How text is split into words before BPE, by GGUF `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PreTokenizer {
    /// `gpt-2`, `mpt`: the GPT-2 regex.
    Gpt2,
    /// `smollm`, `starcoder`: every digit alone, then the GPT-2 regex.
    DigitsThenGpt2,
    /// `llama-bpe`: Llama 3's regex (digits in groups of up to three).
    Llama3,
    /// `qwen2`: Qwen 2's regex (digits alone).
    Qwen2,
    /// `default`: llama.cpp's fallback sequence of four regexes.
    Default,
}

impl PreTokenizer {
    /// The pre-tokenizer named by a `tokenizer.ggml.pre` value; `None` for names we do not
    /// implement (which must fail the load rather than be guessed).
    pub(super) fn from_name(pre: &str) -> Option<Self> {
        Some(match pre {
            "gpt-2" | "gpt2" | "mpt" => Self::Gpt2,
            "smollm" | "starcoder" => Self::DigitsThenGpt2,
            "llama-bpe" | "llama3" | "llama-v3" => Self::Llama3,
            "qwen2" => Self::Qwen2,
            "default" => Self::Default,
            _ => return None,
        })
    }

    /// Whether llama.cpp adds BOS for this vocabulary when `tokenizer.ggml.add_bos_token` is absent.
    pub(super) fn adds_bos_by_default(self) -> bool {
        self == Self::Llama3
    }

    /// Llama 3 looks a whole word up in the vocabulary before merging (`ignore_merges`).
    fn ignores_merges(self) -> bool {
        self == Self::Llama3
    }

    fn build(self) -> std::result::Result<PreTokenizerWrapper, String> {
        let byte_level = |use_regex: bool| -> PreTokenizerWrapper { ByteLevel::new(false, false, use_regex).into() };
        let splits_then_bytes = |regexes: &[&str]| -> std::result::Result<PreTokenizerWrapper, String> {
            let mut steps =
                regexes.iter().map(|regex| isolating_split(regex)).collect::<std::result::Result<Vec<_>, _>>()?;
            steps.push(byte_level(false));
            Ok(Sequence::new(steps).into())
        };
        match self {
            // ByteLevel's own regex is the GPT-2 one.
            Self::Gpt2 => Ok(byte_level(true)),
            Self::DigitsThenGpt2 => Ok(Sequence::new(vec![Digits::new(true).into(), byte_level(true)]).into()),
            Self::Llama3 => splits_then_bytes(&[LLAMA3_SPLIT_REGEX]),
            Self::Qwen2 => splits_then_bytes(&[QWEN2_SPLIT_REGEX]),
            Self::Default => splits_then_bytes(DEFAULT_SPLIT_REGEXES),
        }
    }
}

/// A split that keeps both the matches and the text between them as pieces.
fn isolating_split(regex: &str) -> std::result::Result<PreTokenizerWrapper, String> {
    Split::new(SplitPattern::Regex(regex.to_owned()), SplitDelimiterBehavior::Isolated, false)
        .map(Into::into)
        .map_err(|e| format!("cannot compile the pre-tokenizer regex `{regex}`: {e}"))
}

/// The byte-level BPE `tokenizers::Tokenizer` for `tokens` + `tokenizer.ggml.merges`, mirroring
/// the HuggingFace tokenizer.json the GGUF was converted from: no byte fallback, the given
/// pre-tokenizer, a byte-level decoder, CONTROL tokens as special added tokens and USER_DEFINED
/// ones as plain added tokens (both matched whole before BPE).
pub(super) fn build(
    gguf: &GgufFile,
    tokens: &[&str],
    token_types: &[i64],
    pre: PreTokenizer,
) -> Result<tokenizers::Tokenizer> {
    let path = gguf.path();
    let merges = super::string_array(gguf, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|merge| {
            merge.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())).ok_or_else(|| {
                Error::model_load(path, format!("malformed BPE merge `{merge}` in `tokenizer.ggml.merges`"))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let vocab: Vocab = tokens.iter().enumerate().map(|(id, t)| (t.to_string(), id as u32)).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pre.ignores_merges())
        .build()
        .map_err(|e| Error::model_load(path, format!("cannot build the BPE tokenizer: {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner
        .with_pre_tokenizer(Some(pre.build().map_err(|e| Error::model_load(path, e))?))
        .with_decoder(Some(ByteLevel::new(false, false, true)));

    let added = |wanted: i64, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(token_types)
            .filter(|&(_, &ty)| ty == wanted)
            .map(|(&t, _)| AddedToken::from(t, special))
            .collect()
    };
    inner.add_special_tokens(&added(TOKEN_TYPE_CONTROL, true));
    inner.add_tokens(&added(TOKEN_TYPE_USER_DEFINED, false));
    Ok(inner)
}
