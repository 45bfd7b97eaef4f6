//! The llama-family decoder (llama.cpp's "LLAMA" architecture, and Phi-3 with its fused
//! projections: see [`Family`] and [`crate::models::phi3`]) with a batched forward pass over the
//! paged KV cache.
//!
//! RoPE scaling is honoured as llama.cpp reads it from the GGUF: linear (`rope.scaling.type` =
//! `linear` or absent, `rope.scaling.factor`) and Llama 3's per-pair frequency factors
//! (`rope_freqs.weight`, which llama.cpp's converter writes from `rope_scaling` of type
//! `llama3`), LongRoPE up to its original context (see `long_rope_context`), and the RoPE
//! attention factor. YaRN is refused at load, naming the key and value.
//!
//! One [`LlamaModel::forward`] runs every token row of every chunk through each linear layer
//! as a single matmul, so the weights are read once per step however many sequences are
//! running. Nothing a row computes depends on the other rows: matmuls are batch invariant
//! (see [`crate::quant`]), norms and RoPE are per row, and attention sums each (token, head)
//! over its own positions in a fixed order. A sequence therefore gets bit-identical logits
//! alone, batched with others, or prefilled in chunks of any size.

use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::gguf::GgufFile;
use crate::kv_cache::KvStorage;
use crate::models::attention;
use crate::models::metadata::{ArchKeys, DENSE_DECODER_MUST_BE_OFF, MAX_HEAD_DIM};
use crate::models::rope::{self, QkvRowPrep, RopeTable};
use crate::models::stacked::StackedMatrix;
use crate::models::step::{StepScratch, SwigluFfn};
use crate::models::tensors::ReadTensors;
use crate::models::vocabulary::{LogitRows, Vocabulary};
use crate::models::weights::{layer_tensor, Weights};
use crate::models::{check_chunks, load_error, SeqChunk};
use crate::quant::QMatrix;
use crate::threadpool::ThreadPool;

/// What differs between the architectures this decoder runs: everything else (RMS norms, GQA
/// attention, SwiGLU FFN, RoPE scaling, the metadata refusals) is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    /// `general.architecture`.
    pub architecture: &'static str,
    pub rope: RopeStyle,
    /// Whether `attention.sliding_window` is honoured (on every layer) rather than refused.
    pub sliding_window: bool,
    /// How each layer's projections are stored.
    pub projections: Projections,
}

/// Which pairs of a head RoPE rotates (ggml's modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(x[2i], x[2i+1])` (llama; the converter permuted Wq and Wk for it).
    Normal,
    /// Pairs `(x[i], x[i + head_dim/2])` (Phi-3).
    Neox,
}

/// How a layer's attention and FFN input projections are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projections {
    /// `attn_q`, `attn_k`, `attn_v`; `ffn_gate`, `ffn_up`.
    Separate,
    /// `attn_qkv` holding `[q | k | v]`; `ffn_up` holding `[gate | up]` (Phi-3).
    Fused,
}

/// llama.cpp's "LLAMA" architecture: Llama 1-3 (with Llama 3's RoPE scaling), Mistral, SmolLM.
pub const LLAMA: Family = Family {
    architecture: "llama",
    rope: RopeStyle::Normal,
    sliding_window: false,
    projections: Projections::Separate,
};

/// The architectures this decoder runs.
const FAMILIES: &[Family] = &[LLAMA, crate::models::phi3::PHI3];

/// Hyperparameters, read from the GGUF `{arch}.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `general.name`, empty if absent.
    pub name: String,
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_size: usize,
    pub rope_theta: f32,
    /// Linear RoPE scaling: positions are divided by it (1: none). See
    /// `ArchKeys::rope_linear_factor`.
    pub rope_linear_factor: f64,
    /// Queries and keys are multiplied by it after RoPE (`rope.scaling.attn_factor`; 1: none).
    pub rope_attention_factor: f32,
    pub rms_eps: f32,
    /// The context window this model runs: the one it was trained for, or with LongRoPE the
    /// original one (see `long_rope_context`).
    pub context_length: usize,
    /// Positions every layer attends to (the query's own included); `None`: all before it.
    pub sliding_window: Option<usize>,
}

impl LlamaConfig {
    fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.require_str("general.architecture")?;
        let Some(&family) = FAMILIES.iter().find(|f| f.architecture == arch) else {
            let supported: Vec<&str> = FAMILIES.iter().map(|f| f.architecture).collect();
            return Err(load_error(gguf, format!("architecture `{arch}` is not supported (supported: {supported:?})")));
        };
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
                format!(
                    "metadata `{}` = {rope_dims} is not supported: RoPE over part of the {head_dim} head dimensions (partial rotary) is not implemented",
                    keys.key("rope.dimension_count")
                ),
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
        let sliding_window = sliding_window(&keys, family)?;
        ReadTensors { layer: family.projections.layer_tensors(), model: MODEL_TENSORS, n_layers }
            .refuse_others(gguf, unused_tensor_message)?;
        let embedding_rows = gguf.tensor_info("token_embd.weight").and_then(|t| t.dims.get(1).copied()).unwrap_or(0);
        let vocab_size = keys.optional_usize("vocab_size", embedding_rows)?;
        Ok(Self {
            name: gguf.get("general.name").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
            family,
            vocab_size,
            hidden_size,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_size: keys.usize("feed_forward_length")?,
            rope_theta: keys.float("rope.freq_base", Some(10_000.0))?,
            rope_linear_factor: keys.rope_linear_factor()?,
            rope_attention_factor: keys.rope_attention_factor()?,
            rms_eps: keys.float("attention.layer_norm_rms_epsilon", None)?,
            context_length: long_rope_context(&keys, keys.usize("context_length")?)?,
            sliding_window,
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
            // Queries and keys both scaled by the RoPE attention factor scale their dot products
            // by its square.
            scale: self.rope_attention_factor.powi(2) / (self.head_dim as f32).sqrt(),
        }
    }

    fn span(&self) -> attention::Span {
        self.sliding_window.map_or(attention::Span::Causal, attention::Span::Window)
    }
}

/// `attention.sliding_window`: honoured on every layer by a family that has one (0 means none),
/// refused by the others, naming key and value. (llama.cpp's converter writes none for
/// Mistral's `MistralForCausalLM`, so Mistral GGUFs attend over the whole context, as in
/// llama.cpp.)
fn sliding_window(keys: &ArchKeys<'_>, family: Family) -> Result<Option<usize>> {
    let key = keys.key("attention.sliding_window");
    if !family.sliding_window {
        return match keys.gguf.get(&key) {
            Some(value) if value.as_f64() != Some(0.0) => {
                Err(keys.refusal(&key, value, "sliding-window attention is not implemented for this architecture"))
            }
            _ => Ok(None),
        };
    }
    Ok(Some(keys.optional_usize("attention.sliding_window", 0)?).filter(|&w| w > 0))
}

/// Refuses metadata that changes the numerics in a way this forward does not implement, so a
/// model is never run silently wrong: the error names the key and its value. Keys absent, or
/// present with the value that means "off", are fine.
fn refuse_unhonoured_metadata(keys: &ArchKeys<'_>, head_dim: usize) -> Result<()> {
    keys.refuse_unless_off(DENSE_DECODER_MUST_BE_OFF)?;
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

/// Tensors the llama forward reads outside the layers: the vocabulary's and the optional RoPE
/// frequency factors.
const MODEL_TENSORS: &[&str] =
    &["token_embd.weight", "output_norm.weight", "output.weight", ROPE_FREQS, LONG_ROPE_SHORT, LONG_ROPE_LONG];

/// Per-pair RoPE frequency divisors (Llama 3's RoPE scaling, written by llama.cpp's converter).
const ROPE_FREQS: &str = "rope_freqs.weight";
/// LongRoPE's per-pair frequency divisors for sequences up to the original context, and beyond.
const LONG_ROPE_SHORT: &str = "rope_factors_short.weight";
const LONG_ROPE_LONG: &str = "rope_factors_long.weight";

/// The context a LongRoPE model (Phi-3 128k, Phi-3.5) runs: its short factors serve sequences
/// up to `rope.scaling.original_context_length` and its long ones sequences beyond it. The
/// short ones are honoured and the context capped at that length, which is what llama.cpp does
/// with a context up to that length and what transformers does for sequences up to it. Without
/// LongRoPE factors the context is `trained`. A file with only one of the two tensors, with
/// Llama 3's `rope_freqs.weight` beside them, or with `rope.scaling.type` = `longrope` and
/// neither, is refused naming them.
fn long_rope_context(keys: &ArchKeys<'_>, trained: usize) -> Result<usize> {
    let has = |name: &str| keys.gguf.tensor_info(name).is_some();
    match (has(LONG_ROPE_SHORT), has(LONG_ROPE_LONG)) {
        (false, false) => {
            let type_key = keys.key("rope.scaling.type");
            return match keys.gguf.get(&type_key) {
                Some(value) if value.as_str() == Some("longrope") => Err(keys.refusal(
                    &type_key,
                    value,
                    &format!("LongRoPE needs the tensors `{LONG_ROPE_SHORT}` and `{LONG_ROPE_LONG}`"),
                )),
                _ => Ok(trained),
            };
        }
        (true, true) if !has(ROPE_FREQS) => {}
        _ => {
            return Err(load_error(
                keys.gguf,
                format!(
                    "LongRoPE tensors `{LONG_ROPE_SHORT}` and `{LONG_ROPE_LONG}` must come together and without `{ROPE_FREQS}`"
                ),
            ))
        }
    }
    Ok(trained.min(keys.optional_usize("rope.scaling.original_context_length", trained)?))
}

impl Projections {
    /// Tensors the forward reads in every layer (each `blk.N.{name}.weight`).
    fn layer_tensors(self) -> &'static [&'static str] {
        match self {
            Self::Separate => &[
                "attn_norm",
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "ffn_norm",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
            ],
            Self::Fused => &["attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"],
        }
    }

    /// Layer `layer`'s `[q | k | v]` and `[gate | up]` projections.
    fn load(self, w: &Weights<'_>, layer: usize, c: &LlamaConfig) -> Result<(StackedMatrix, StackedMatrix)> {
        match self {
            Self::Separate => Ok((
                w.attention_qkv(layer, c.q_dim(), c.kv_dim(), c.hidden_size)?,
                w.ffn_gate_up(layer, c.ffn_size, c.hidden_size)?,
            )),
            Self::Fused => {
                let qkv_rows = c.q_dim() + 2 * c.kv_dim();
                let qkv = w.matrix(&layer_tensor(layer, "attn_qkv"), qkv_rows, c.hidden_size)?;
                let gate_up = w.matrix(&layer_tensor(layer, "ffn_up"), 2 * c.ffn_size, c.hidden_size)?;
                Ok((StackedMatrix::Fused(qkv), StackedMatrix::Fused(gate_up)))
            }
        }
    }
}

/// Why a tensor the llama forward does not read is refused (see [`ReadTensors`]).
fn unused_tensor_message(name: &str) -> String {
    let why = if name.ends_with(".bias") {
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
    ffn: SwigluFfn,
}

/// A loaded llama-family model.
pub struct LlamaModel {
    config: LlamaConfig,
    /// Token embedding, final norm and output head.
    vocabulary: Vocabulary,
    layers: Vec<Layer>,
    /// `theta^(-2i / head_dim)` for each rotated pair `i`, scaled (see
    /// [`rope::scaled_frequencies`]).
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
                let (qkv, gate_up) = c.family.projections.load(&w, l, c)?;
                Ok(Layer {
                    attn_norm: w.vector(&name("attn_norm"), c.hidden_size)?,
                    qkv,
                    attn_output: w.matrix(&name("attn_output"), c.hidden_size, c.q_dim())?,
                    ffn: SwigluFfn {
                        norm: w.vector(&name("ffn_norm"), c.hidden_size)?,
                        gate_up,
                        down: w.matrix(&name("ffn_down"), c.hidden_size, c.ffn_size)?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output_norm = w.vector("output_norm.weight", c.hidden_size)?;
        let frequency_factors = rope_frequency_factors(&w, c.head_dim / 2)?;
        let rope_frequencies =
            rope::scaled_frequencies(c.rope_theta, c.head_dim, c.rope_linear_factor, frequency_factors.as_deref());
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

    /// The thread pool the forward runs on.
    pub(crate) fn pool(&self) -> &ThreadPool {
        &self.pool
    }

    /// One batched step over all chunks (see [`SeqChunk`]): writes each new token's K/V into
    /// `kv` through the chunk's block table, attends causally over positions
    /// `0..start_pos + len`, and writes one row of `vocab_size` logits per chunk with
    /// `want_logits`, in chunk order, into `logits` (resized).
    ///
    /// Errors: a token id outside the vocabulary (`InvalidRequest`), or chunks and KV storage
    /// that do not fit together (`Internal`: the caller broke the [`SeqChunk`] contract).
    pub fn forward(&self, chunks: &[SeqChunk<'_>], kv: &mut KvStorage, logits: &mut Vec<f32>) -> Result<()> {
        LogitRows::all_logits(logits, |rows| self.forward_rows(chunks, kv, rows))
    }

    /// [`Self::forward`] with the head's work per logit row chosen by the caller (see
    /// [`LogitRows`]).
    pub fn forward_rows(&self, chunks: &[SeqChunk<'_>], kv: &mut KvStorage, rows: &mut LogitRows) -> Result<()> {
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
        if let Some(first) = self.layers.first() {
            s.norm_first_layer_input(&first.attn_norm, c.rms_eps, pool);
        }
        let mut n_rows = n;
        for (l, layer) in self.layers.iter().enumerate() {
            // `normed` holds this layer's input: `x` normalised with `attn_norm`.
            s.project_qkv(&layer.qkv, pool);
            QkvRowPrep { bias: None, head_norms: None, style: c.family.rope, rope }.apply(&mut s.qkv, &geometry, pool);
            if l + 1 == self.layers.len() {
                n_rows = s.attend_logit_rows(&geometry, l, c.span(), chunks, kv, pool);
            } else {
                s.attend(&geometry, l, c.span(), chunks, kv, pool);
            }
            s.project(&layer.attn_output, n_rows, pool);
            s.add_residual(None, Some(&layer.ffn.norm), c.rms_eps, n_rows, pool);
            s.swiglu_ffn(&layer.ffn, c.ffn_size, n_rows, pool);
            let next_norm = self.layers.get(l + 1).map(|next| &next.attn_norm[..]);
            s.add_residual(None, next_norm, c.rms_eps, n_rows, pool);
        }

        self.vocabulary.logits_of_kept_rows(n_rows, c.rms_eps, s, rows, pool);
        Ok(())
    }
}

/// The per-pair RoPE frequency divisors the model runs with, if it has any: Llama 3's
/// `rope_freqs.weight`, or LongRoPE's short factors (see [`long_rope_context`]; the long ones
/// are checked as well, though no sequence reaches them).
fn rope_frequency_factors(w: &Weights<'_>, pairs: usize) -> Result<Option<Vec<f32>>> {
    if w.gguf.tensor_info(LONG_ROPE_SHORT).is_some() {
        positive_factors(w, LONG_ROPE_LONG, pairs)?;
        return positive_factors(w, LONG_ROPE_SHORT, pairs).map(Some);
    }
    match w.gguf.tensor_info(ROPE_FREQS) {
        Some(_) => positive_factors(w, ROPE_FREQS, pairs).map(Some),
        None => Ok(None),
    }
}

/// The tensor `name` of `pairs` values, all positive.
fn positive_factors(w: &Weights<'_>, name: &str, pairs: usize) -> Result<Vec<f32>> {
    let factors = w.vector(name, pairs)?;
    match factors.iter().position(|f| !(f.is_finite() && *f > 0.0)) {
        None => Ok(factors),
        Some(i) => Err(load_error(
            w.gguf,
            format!("tensor `{name}` holds {} at index {i}: RoPE frequency factors must be positive", factors[i]),
        )),
    }
}

/// Per-step buffers: the shared ones and the RoPE rotation of each row.
#[derive(Default)]
struct Scratch {
    step: StepScratch,
    rope: RopeTable,
}
