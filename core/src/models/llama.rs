//! The llama-family decoder (llama.cpp's "LLAMA" architecture) with a batched forward pass
//! over the paged KV cache.
//!
//! One [`LlamaModel::forward`] runs every token row of every chunk through each linear layer
//! as a single matmul, so the weights are read once per step however many sequences are
//! running. Nothing a row computes depends on the other rows: matmuls are batch invariant
//! (see [`crate::quant`]), norms and RoPE are per row, and attention sums each (token, head)
//! over its own positions in a fixed order. A sequence therefore gets bit-identical logits
//! alone, batched with others, or prefilled in chunks of any size.

use std::sync::{Arc, Mutex};

use crate::gguf::GgufFile;
use crate::kv_cache::KvStorage;
use crate::models::attention;
use crate::models::elementwise::{add_in_place, rms_norm_rows, swiglu_rows};
use crate::models::kv_write::store_keys_and_values;
use crate::models::metadata::{ArchKeys, MustBeOff, MAX_HEAD_DIM, ROPE_SCALING_WHY};
use crate::models::rope::{self, RopeTable};
use crate::models::stacked::StackedMatrix;
use crate::models::step::StepScratch;
use crate::models::tensors::ReadTensors;
use crate::models::vocabulary::{Vocabulary, VOCABULARY_TENSORS};
use crate::models::weights::{layer_tensor, Weights};
use crate::models::{check_chunks, load_error, SeqChunk};
use crate::quant::QMatrix;
use crate::threadpool::ThreadPool;
use crate::Result;

/// Values of `general.architecture` this implementation runs.
const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];

/// Hyperparameters, read from the GGUF `{arch}.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `general.name`, empty if absent.
    pub name: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_size: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    /// The context window the model was trained for.
    pub context_length: usize,
}

impl LlamaConfig {
    fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.require_str("general.architecture")?;
        if !SUPPORTED_ARCHITECTURES.contains(&arch) {
            return Err(load_error(
                gguf,
                format!("architecture `{arch}` is not supported (supported: {SUPPORTED_ARCHITECTURES:?})"),
            ));
        }
        let keys = ArchKeys { gguf, arch };
        let hidden_size = keys.usize("embedding_length")?;
        let n_heads = keys.usize("attention.head_count")?;
        let n_kv_heads = keys.optional_usize("attention.head_count_kv", n_heads)?;
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(load_error(gguf, format!("{n_heads} attention heads cannot share {n_kv_heads} KV heads")));
        }
        let head_dim = keys.optional_usize("attention.key_length", hidden_size / n_heads)?;
        let rope_dims = keys.optional_usize("rope.dimension_count", head_dim)?;
        if rope_dims != head_dim || !head_dim.is_multiple_of(2) {
            return Err(load_error(
                gguf,
                format!("RoPE over {rope_dims} of {head_dim} head dimensions is not supported"),
            ));
        }
        // Sizes come from an untrusted file: bound them before anything is allocated from them
        // (with zero layers no weight shape would ever check the head size, yet the RoPE table
        // is sized by it).
        let n_layers = keys.usize("block_count")?;
        if n_layers == 0 || hidden_size == 0 {
            return Err(load_error(
                gguf,
                format!(
                    "`{}` is {n_layers} and `{}` is {hidden_size}: both must be at least 1",
                    keys.key("block_count"),
                    keys.key("embedding_length")
                ),
            ));
        }
        if head_dim == 0 || head_dim > MAX_HEAD_DIM || n_heads.checked_mul(head_dim).is_none() {
            return Err(load_error(
                gguf,
                format!(
                    "`{}` is {head_dim}; supported head sizes are 1..={MAX_HEAD_DIM}",
                    keys.key("attention.key_length")
                ),
            ));
        }
        refuse_unhonoured_metadata(&keys, head_dim)?;
        ReadTensors { layer: LAYER_TENSORS, model: VOCABULARY_TENSORS, n_layers }
            .refuse_others(gguf, unused_tensor_message)?;
        let embedding_rows = gguf.tensor_info("token_embd.weight").and_then(|t| t.dims.get(1).copied()).unwrap_or(0);
        let vocab_size = keys.optional_usize("vocab_size", embedding_rows)?;
        Ok(Self {
            name: gguf.get("general.name").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
            vocab_size,
            hidden_size,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_size: keys.usize("feed_forward_length")?,
            rope_theta: keys.float("rope.freq_base", Some(10_000.0))?,
            rms_eps: keys.float("attention.layer_norm_rms_epsilon", None)?,
            context_length: keys.usize("context_length")?,
        })
    }

    fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    fn attention_geometry(&self) -> attention::Geometry {
        attention::Geometry {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            qkv_row_len: self.q_dim() + 2 * self.kv_dim(),
            scale: 1.0 / (self.head_dim as f32).sqrt(),
        }
    }
}

/// `{arch}.*` keys that change the numerics of features this forward does not implement.
const MUST_BE_OFF: &MustBeOff = &[
    ("attn_logit_softcapping", &[0.0], "logit soft-capping is not implemented for this architecture"),
    ("final_logit_softcapping", &[0.0], "logit soft-capping is not implemented for this architecture"),
    ("attention.sliding_window", &[0.0], "sliding-window attention is not implemented for this architecture"),
    ("expert_count", &[0.0], "mixture-of-experts layers are not implemented"),
    ("expert_used_count", &[0.0], "mixture-of-experts layers are not implemented"),
    // Granite-style scales: 0 is "unset", 1 changes nothing.
    ("embedding_scale", &[0.0, 1.0], "this scale is not implemented for this architecture"),
    ("residual_scale", &[0.0, 1.0], "this scale is not implemented for this architecture"),
    ("logit_scale", &[0.0, 1.0], "this scale is not implemented for this architecture"),
    ("attention.scale", &[0.0], "a custom attention scale is not implemented (only 1/sqrt(head size))"),
    // llama.cpp reads both as RoPE scaling for every architecture.
    ("rope.scale_linear", &[0.0, 1.0], ROPE_SCALING_WHY),
    ("rope.scaling.attn_factor", &[0.0, 1.0], ROPE_SCALING_WHY),
];

/// Refuses metadata that changes the numerics in a way this forward does not implement, so a
/// model is never run silently wrong: the error names the key and its value. Keys absent, or
/// present with the value that means "off", are fine.
fn refuse_unhonoured_metadata(keys: &ArchKeys<'_>, head_dim: usize) -> Result<()> {
    keys.refuse_rope_scaling()?;
    keys.refuse_unless_off(MUST_BE_OFF)?;
    let value_key = keys.key("attention.value_length");
    if let Some(value) = keys.gguf.get(&value_key) {
        if value.as_u64() != Some(head_dim as u64) {
            let why =
                format!("value heads must have the key head size {head_dim} (`{}`)", keys.key("attention.key_length"));
            return Err(keys.refusal(&value_key, value, &why));
        }
    }
    keys.refuse_non_causal()
}

/// Tensors the llama forward reads in every layer (each `blk.N.{name}.weight`).
const LAYER_TENSORS: &[&str] =
    &["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"];

/// Why a tensor the llama forward does not read is refused (see [`ReadTensors`]).
fn unused_tensor_message(name: &str) -> String {
    let why = if name == "rope_freqs.weight" {
        "RoPE frequency factors (llama3-style RoPE scaling) are not implemented yet"
    } else if name.ends_with(".bias") {
        "bias tensors are not implemented for this architecture"
    } else {
        "the llama forward does not use it, and ignoring a weight would compute wrong outputs"
    };
    format!("tensor `{name}` is not supported: {why}")
}

struct Layer {
    attn_norm: Vec<f32>,
    /// Wq, Wk and Wv stacked: gives `[q | k | v]` per row (one fused matmul when their types agree).
    qkv: StackedMatrix,
    attn_output: QMatrix,
    ffn_norm: Vec<f32>,
    /// Wgate and Wup stacked: gives `[gate | up]` per row.
    gate_up: StackedMatrix,
    down: QMatrix,
}

/// A loaded llama-family model.
pub struct LlamaModel {
    config: LlamaConfig,
    /// Token embedding, final norm and output head.
    vocabulary: Vocabulary,
    layers: Vec<Layer>,
    /// `theta^(-2i / head_dim)` for each rotated pair `i`.
    rope_frequencies: Vec<f64>,
    pool: Arc<ThreadPool>,
    /// Buffers reused by every step, so a warmed-up step does not allocate.
    scratch: Mutex<Scratch>,
}

impl std::fmt::Debug for LlamaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaModel").field("config", &self.config).finish_non_exhaustive()
    }
}

impl LlamaModel {
    /// Loads weights from an opened GGUF. Errors: architecture not llama-family (named),
    /// unsupported tensor type, missing tensor, inconsistent shapes.
    pub fn load(gguf: &GgufFile, pool: Arc<ThreadPool>) -> Result<Self> {
        let config = LlamaConfig::from_gguf(gguf)?;
        let c = &config;
        let w = Weights { gguf };
        let token_embedding = w.matrix("token_embd.weight", c.vocab_size, c.hidden_size)?;
        let output = w.optional_matrix("output.weight", c.vocab_size, c.hidden_size)?;
        let layers = (0..c.n_layers)
            .map(|l| {
                let name = |tensor: &str| layer_tensor(l, tensor);
                Ok(Layer {
                    attn_norm: w.vector(&name("attn_norm"), c.hidden_size)?,
                    qkv: w.attention_qkv(l, c.q_dim(), c.kv_dim(), c.hidden_size)?,
                    attn_output: w.matrix(&name("attn_output"), c.hidden_size, c.q_dim())?,
                    ffn_norm: w.vector(&name("ffn_norm"), c.hidden_size)?,
                    gate_up: w.ffn_gate_up(l, c.ffn_size, c.hidden_size)?,
                    down: w.matrix(&name("ffn_down"), c.hidden_size, c.ffn_size)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output_norm = w.vector("output_norm.weight", c.hidden_size)?;
        let rope_frequencies = rope::frequencies(c.rope_theta, c.head_dim);
        Ok(Self {
            config,
            vocabulary: Vocabulary { token_embedding, output_norm, output },
            layers,
            rope_frequencies,
            pool,
            scratch: Mutex::new(Scratch::default()),
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// A KV cache sized for this model: `num_blocks` blocks of `block_size` positions.
    pub fn new_kv_storage(&self, num_blocks: usize, block_size: usize) -> KvStorage {
        KvStorage::new(self.config.n_layers, num_blocks, block_size, self.config.n_kv_heads, self.config.head_dim)
    }

    /// One batched step over all chunks (see [`SeqChunk`]): writes each new token's K/V into
    /// `kv` through the chunk's block table, attends causally over positions
    /// `0..start_pos + len`, and writes one row of `vocab_size` logits per chunk with
    /// `want_logits`, in chunk order, into `logits` (resized).
    ///
    /// Errors: a token id outside the vocabulary (`InvalidRequest`), or chunks and KV storage
    /// that do not fit together (`Internal`: the caller broke the [`SeqChunk`] contract).
    pub fn forward(&self, chunks: &[SeqChunk<'_>], kv: &mut KvStorage, logits: &mut Vec<f32>) -> Result<()> {
        let c = &self.config;
        check_chunks(chunks, kv, c.n_layers, c.kv_dim(), c.vocab_size)?;
        let pool = &*self.pool;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *scratch;
        let geometry = c.attention_geometry();
        s.step.prepare(chunks, &geometry, c.hidden_size, c.ffn_size);
        s.rope.fill(&s.step.rows, &self.rope_frequencies);
        let (rope, s) = (&s.rope, &mut s.step);
        let n = s.rows.len();

        self.vocabulary.embed(&s.rows, &mut s.x, c.hidden_size);
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm_rows(&s.x, &layer.attn_norm, c.rms_eps, &mut s.normed, pool);
            layer.qkv.matmul(&s.normed, n, &mut s.qkv, pool);
            rope::rotate_normal(&mut s.qkv, &geometry, rope);
            store_keys_and_values(&s.qkv, &geometry, l, chunks, kv);
            attention::attend(
                &mut s.attention,
                &geometry,
                l,
                attention::Span::Causal,
                chunks,
                kv,
                &s.qkv,
                &mut s.attn,
                pool,
            );
            layer.attn_output.matmul(&s.attn, n, &mut s.projected, pool);
            add_in_place(&mut s.x, &s.projected);

            rms_norm_rows(&s.x, &layer.ffn_norm, c.rms_eps, &mut s.normed, pool);
            layer.gate_up.matmul(&s.normed, n, &mut s.gate_up, pool);
            swiglu_rows(&s.gate_up, c.ffn_size, &mut s.ffn_hidden, pool);
            layer.down.matmul(&s.ffn_hidden, n, &mut s.projected, pool);
            add_in_place(&mut s.x, &s.projected);
        }

        self.vocabulary.wanted_logits(chunks, c.rms_eps, s, logits, pool);
        Ok(())
    }
}

/// Per-step buffers: the shared ones and the RoPE rotation of each row.
#[derive(Default)]
struct Scratch {
    step: StepScratch,
    rope: RopeTable,
}
