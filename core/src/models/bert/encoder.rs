//! The BERT encoder and mean pooling: token ids in, one unit-length vector per sequence out.

use std::ops::Range;

use super::attention::{self_attention, HeadLayout};
use super::config::BertConfig;
use super::linear::Linear;
use super::ops::{add_in_place, gelu_in_place, l2_normalize, LayerNorm};
use super::weights::WeightFile;
use crate::threadpool::ThreadPool;

/// Word, position and token-type embeddings, summed and normalised.
struct Embeddings {
    word: Vec<f32>,
    position: Vec<f32>,
    /// The row of token type 0: single-sentence inputs never use another.
    token_type_zero: Vec<f32>,
    norm: LayerNorm,
}

/// One transformer block (post-norm, as in BERT).
struct EncoderLayer {
    /// Query, key and value projections stacked into one `[3 · hidden, hidden]` layer.
    qkv: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// The loaded network.
pub(super) struct BertEncoder {
    hidden: usize,
    heads: HeadLayout,
    vocab_size: usize,
    max_positions: usize,
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
}

impl BertEncoder {
    /// Builds the encoder from Hugging Face `BertModel` tensor names.
    pub fn load(weights: &WeightFile, config: &BertConfig) -> crate::error::Result<Self> {
        let (hidden, eps) = (config.hidden_size, config.layer_norm_eps);
        let token_type =
            weights.tensor("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, hidden])?;
        let embeddings = Embeddings {
            word: weights.tensor("embeddings.word_embeddings.weight", &[config.vocab_size, hidden])?,
            position: weights
                .tensor("embeddings.position_embeddings.weight", &[config.max_position_embeddings, hidden])?,
            token_type_zero: token_type[..hidden].to_vec(),
            norm: weights.layer_norm("embeddings.LayerNorm", hidden, eps)?,
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let name = |suffix: &str| format!("encoder.layer.{i}.{suffix}");
                let qkv_names = ["query", "key", "value"].map(|part| name(&format!("attention.self.{part}")));
                Ok(EncoderLayer {
                    qkv: weights.linear(&qkv_names, hidden, hidden)?,
                    attention_output: weights.linear(&[name("attention.output.dense")], hidden, hidden)?,
                    attention_norm: weights.layer_norm(&name("attention.output.LayerNorm"), hidden, eps)?,
                    intermediate: weights.linear(&[name("intermediate.dense")], config.intermediate_size, hidden)?,
                    output: weights.linear(&[name("output.dense")], hidden, config.intermediate_size)?,
                    output_norm: weights.layer_norm(&name("output.LayerNorm"), hidden, eps)?,
                })
            })
            .collect::<crate::error::Result<_>>()?;
        Ok(Self {
            hidden,
            heads: HeadLayout { n_heads: config.num_attention_heads, head_dim: config.head_dim() },
            vocab_size: config.vocab_size,
            max_positions: config.max_position_embeddings,
            embeddings,
            layers,
        })
    }

    /// Width of the output vectors.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Token ids must be below this.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Sequences may be at most this long.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Mean-pooled, L2-normalised vectors, one per sequence. Every sequence must be non-empty,
    /// at most [`Self::max_positions`] long, with ids below [`Self::vocab_size`].
    pub fn embed(&self, pool: &ThreadPool, sequences: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let ranges: Vec<Range<usize>> = sequences
            .iter()
            .scan(0, |end, tokens| {
                let start = *end;
                *end += tokens.len();
                Some(start..*end)
            })
            .collect();
        let n_tokens = ranges.last().map_or(0, |r| r.end);
        let hidden_states = self.forward(pool, sequences, &ranges, n_tokens);
        ranges.iter().map(|range| self.mean_pool(&hidden_states, range)).collect()
    }

    fn forward(&self, pool: &ThreadPool, sequences: &[Vec<u32>], ranges: &[Range<usize>], n_tokens: usize) -> Vec<f32> {
        let mut hidden_states = self.embed_tokens(sequences, n_tokens);
        let intermediate_width = self.layers.first().map_or(0, |layer| layer.intermediate.out_features());
        let mut qkv = vec![0.0; n_tokens * 3 * self.hidden];
        let mut context = vec![0.0; n_tokens * self.hidden];
        let mut projected = vec![0.0; n_tokens * self.hidden];
        let mut intermediate = vec![0.0; n_tokens * intermediate_width];
        for layer in &self.layers {
            layer.qkv.forward(pool, &hidden_states, &mut qkv);
            self_attention(pool, self.heads, &qkv, ranges, &mut context);
            layer.attention_output.forward(pool, &context, &mut projected);
            add_in_place(&mut hidden_states, &projected);
            layer.attention_norm.forward_in_place(&mut hidden_states);

            layer.intermediate.forward(pool, &hidden_states, &mut intermediate);
            gelu_in_place(&mut intermediate);
            layer.output.forward(pool, &intermediate, &mut projected);
            add_in_place(&mut hidden_states, &projected);
            layer.output_norm.forward_in_place(&mut hidden_states);
        }
        hidden_states
    }

    /// `[n_tokens, hidden]` input rows: word + token type + position embeddings, normalised.
    fn embed_tokens(&self, sequences: &[Vec<u32>], n_tokens: usize) -> Vec<f32> {
        let h = self.hidden;
        let table = &self.embeddings;
        let mut rows = Vec::with_capacity(n_tokens * h);
        for tokens in sequences {
            for (position, &id) in tokens.iter().enumerate() {
                let word = &table.word[id as usize * h..(id as usize + 1) * h];
                let position = &table.position[position * h..(position + 1) * h];
                // Summed in the order Hugging Face uses, (word + type) + position.
                rows.extend(word.iter().zip(&table.token_type_zero).zip(position).map(|((w, t), p)| (w + t) + p));
            }
        }
        table.norm.forward_in_place(&mut rows);
        rows
    }

    /// The average of a sequence's token vectors, scaled to unit length. The average's `1 / len`
    /// factor cancels in the normalisation, so the sum is normalised directly.
    fn mean_pool(&self, hidden_states: &[f32], range: &Range<usize>) -> Vec<f32> {
        let mut sum = vec![0.0f32; self.hidden];
        for row in hidden_states[range.start * self.hidden..range.end * self.hidden].chunks_exact(self.hidden) {
            add_in_place(&mut sum, row);
        }
        l2_normalize(&mut sum);
        sum
    }
}
