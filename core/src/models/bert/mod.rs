//! Sentence embeddings with a BERT model in sentence-transformers layout (e.g. all-MiniLM-L6-v2):
//! the encoder's token vectors are mean-pooled and L2-normalised.
//!
//! Texts are tokenised without padding or truncation and packed back to back, so no work is
//! spent on padding and a text's vector does not depend on the rest of its batch.

mod attention;
mod config;
mod encoder;
mod linear;
mod ops;
mod weights;

use std::path::Path;
use std::sync::Arc;

use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::threadpool::ThreadPool;
use config::BertConfig;
use encoder::BertEncoder;
use weights::WeightFile;

/// Texts per forward pass: bounds the activation memory (at most this many × `max_tokens` rows)
/// while keeping batches big enough to amortise reading the weights.
const SUB_BATCH: usize = 32;

/// A loaded sentence-embedding model.
pub struct BertEmbedder {
    name: String,
    tokenizer: Tokenizer,
    encoder: BertEncoder,
    max_tokens: usize,
    pool: Arc<ThreadPool>,
}

impl BertEmbedder {
    /// Loads from a sentence-transformers folder: `config.json`, `model.safetensors`,
    /// `tokenizer.json`, `1_Pooling/config.json` (must select mean pooling) and optionally
    /// `sentence_bert_config.json` (for `max_seq_length`). Errors name the file and the problem.
    pub fn load(dir: &Path, pool: Arc<ThreadPool>) -> Result<Self> {
        let config = BertConfig::load(dir)?;
        config::require_mean_pooling(dir)?;
        let max_seq_length = config::max_seq_length(dir)?;

        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| Error::model_load(&tokenizer_path, e.to_string()))?;
        // Exported tokenizers often pad every input to a fixed length and truncate silently;
        // texts are packed instead, and too-long inputs are rejected, not cut.
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| Error::model_load(&tokenizer_path, e.to_string()))?;

        let weights_path = dir.join("model.safetensors");
        let bytes =
            std::fs::read(&weights_path).map_err(|e| Error::model_load(&weights_path, format!("cannot read: {e}")))?;
        let weights = WeightFile::parse(&weights_path, &bytes, "embeddings.word_embeddings.weight")?;
        let encoder = BertEncoder::load(&weights, &config)?;

        let tokenizer_vocab = tokenizer.get_vocab_size(true);
        if tokenizer_vocab > encoder.vocab_size() {
            return Err(Error::model_load(
                &tokenizer_path,
                format!("the tokenizer has {tokenizer_vocab} tokens but the model only {}", encoder.vocab_size()),
            ));
        }
        let max_tokens = max_seq_length.map_or(encoder.max_positions(), |len| len.min(encoder.max_positions()));
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .or(config.name_or_path)
            .unwrap_or_else(|| "bert".to_string());
        Ok(Self { name, tokenizer, encoder, max_tokens, pool })
    }

    /// Length of the embedding vectors (384 for all-MiniLM-L6-v2).
    pub fn dim(&self) -> usize {
        self.encoder.hidden_size()
    }

    /// The longest input accepted, in tokens including `[CLS]` and `[SEP]`.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The model's name: its folder name, or `_name_or_path` from `config.json`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One unit-length vector per text, in order: mean pooling over the tokens, L2-normalised.
    ///
    /// An empty list, an empty string, or a text longer than [`Self::max_tokens`] is an
    /// [`Error::InvalidRequest`] for `input`; nothing is computed then.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(self.embed_counting_tokens(texts)?.0)
    }

    /// Like [`Self::embed`], also returning how many tokens the texts took in all (for usage
    /// reporting) without tokenizing them a second time.
    pub fn embed_counting_tokens(&self, texts: &[&str]) -> Result<(Vec<Vec<f32>>, usize)> {
        if texts.is_empty() {
            return Err(Error::invalid("input", "must contain at least one text"));
        }
        let token_ids = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                if text.is_empty() {
                    return Err(Error::invalid("input", format!("input[{i}] is an empty string")));
                }
                let ids = self.token_ids(text)?;
                if ids.len() > self.max_tokens {
                    return Err(Error::invalid(
                        "input",
                        format!(
                            "input[{i}] has {} tokens, more than this model's limit of {}",
                            ids.len(),
                            self.max_tokens
                        ),
                    ));
                }
                Ok(ids)
            })
            .collect::<Result<Vec<_>>>()?;
        let total_tokens = token_ids.iter().map(Vec::len).sum();
        let vectors = token_ids.chunks(SUB_BATCH).flat_map(|batch| self.encoder.embed(&self.pool, batch)).collect();
        Ok((vectors, total_tokens))
    }

    /// The number of tokens the embedder sees for `text`, including `[CLS]` and `[SEP]`.
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.token_ids(text)?.len())
    }

    fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.tokenizer.encode_fast(text, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }
}

impl std::fmt::Debug for BertEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertEmbedder")
            .field("name", &self.name)
            .field("dim", &self.dim())
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}
