//! Gemma 3 text decoder (llama.cpp's "GEMMA3" architecture) with the same batched forward over
//! the paged KV cache as [`crate::models::llama`].
//!
//! Differences from llama, each read from the GGUF and honoured (anything else is refused at
//! load, naming the key or tensor):
//! - the token embedding is scaled by `sqrt(hidden_size)`;
//! - RMS norms before *and after* attention and the FFN (`post_attention_norm`,
//!   `post_ffw_norm`), and per-head RMS norms on queries and keys (`attn_q_norm`,
//!   `attn_k_norm`). llama.cpp's converter stores Gemma's `1 + weight` norm scale already
//!   added, so the weights are used as they are;
//! - RoPE in NEOX order (pairs `(x[i], x[i + head_dim/2])`), base `rope.freq_base` on global
//!   layers and `rope.freq_base_swa` (default 10000) on sliding ones;
//! - interleaved sliding-window layers (`attention.sliding_window` positions, pattern
//!   `attention.sliding_window_pattern`: a period `n` where every `n`-th layer is global, or
//!   one bool per layer; llama.cpp's default period is 6) and global layers;
//! - a GELU (tanh approximation) gated FFN;
//! - attention scaled by `1/sqrt(head_dim)`, or `1/sqrt(hidden/heads)` for the 62-layer 27B,
//!   as llama.cpp does (see [`attention_scale`]).
//!
//! Batch invariance holds for the same reasons as llama's: every operation is per row or per
//! (token, head) in a fixed order.

use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::gguf::{GgufFile, Value};
use crate::kv_cache::{KvPool, KvStorage};
use crate::models::attention::{self, Span};
use crate::models::elementwise::geglu_tanh_rows;
use crate::models::llama::RopeStyle;
use crate::models::metadata::{ArchKeys, DecoderDims, MustBeOff, ROPE_SCALING_WHY};
use crate::models::rope::{self, HeadNorms, QkvRowPrep, RopeTable};
use crate::models::stacked::StackedMatrix;
use crate::models::step::StepScratch;
use crate::models::tensors::ReadTensors;
use crate::models::vocabulary::{LogitRows, Vocabulary, VOCABULARY_TENSORS};
use crate::models::weights::{layer_tensor, Weights};
use crate::models::{check_chunks, check_sliding_tables, load_error, SeqChunk};
use crate::quant::QMatrix;
use crate::threadpool::ThreadPool;

const ARCHITECTURE: &str = "gemma3";

/// llama.cpp's sliding-window period when the file does not give one: layers `0..5` of every 6
/// slide, the 6th is global.
const DEFAULT_SWA_PERIOD: u64 = 6;
/// llama.cpp's RoPE base of sliding layers when `rope.freq_base_swa` is absent.
const DEFAULT_SWA_ROPE_BASE: f64 = 10_000.0;

/// Hyperparameters, read from the GGUF `gemma3.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Gemma3Config {
    /// `general.name`, empty if absent.
    pub name: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_size: usize,
    /// RoPE base of global layers.
    pub rope_theta: f32,
    /// RoPE base of sliding-window layers.
    pub rope_theta_swa: f32,
    pub rms_eps: f32,
    pub context_length: usize,
    /// Positions a sliding layer attends to (the query's own included); `None`: no layer slides.
    pub sliding_window: Option<usize>,
    /// Per layer: does it use the sliding window?
    pub sliding_layers: Vec<bool>,
    /// Attention scores are `q·k · attention_scale` (see [`attention_scale`]).
    pub attention_scale: f32,
}

/// Gemma 3 scales attention by `query_pre_attn_scalar^-1/2`, a value the GGUF does not carry:
/// it is the head size in every released model but the 27B, whose is `hidden / heads`. llama.cpp
/// recognises the 27B by its 62 layers; so do we, rather than run it silently wrong.
pub fn attention_scale(n_layers: usize, hidden_size: usize, n_heads: usize, head_dim: usize) -> f32 {
    const LAYERS_OF_27B: usize = 62;
    let scalar = if n_layers == LAYERS_OF_27B { hidden_size / n_heads } else { head_dim };
    1.0 / (scalar as f32).sqrt()
}

/// `gemma3.*` keys that change the numerics of features this forward does not implement.
const MUST_BE_OFF: &MustBeOff = &[
    ("attn_logit_softcapping", &[0.0], "attention logit soft-capping is not implemented"),
    ("final_logit_softcapping", &[0.0], "final logit soft-capping is not implemented yet"),
    ("expert_count", &[0.0], "mixture-of-experts layers are not implemented"),
    ("expert_used_count", &[0.0], "mixture-of-experts layers are not implemented"),
    ("embedding_scale", &[0.0], "Gemma's embedding scale is sqrt(hidden size); another is not implemented"),
    ("residual_scale", &[0.0, 1.0], "this scale is not implemented for this architecture"),
    ("logit_scale", &[0.0, 1.0], "this scale is not implemented for this architecture"),
    ("attention.scale", &[0.0], "a custom attention scale is not implemented (only 1/sqrt(head size))"),
    // llama.cpp reads both as RoPE scaling for every architecture.
    ("rope.scale_linear", &[0.0, 1.0], ROPE_SCALING_WHY),
    ("rope.scaling.attn_factor", &[0.0, 1.0], ROPE_SCALING_WHY),
];

/// Sliding-layer head sizes llama.cpp reads (Gemma 4 style); this forward has one head size.
const SAME_AS_HEAD_SIZE: &[&str] =
    &["attention.key_length_swa", "attention.value_length_swa", "rope.dimension_count_swa"];

impl Gemma3Config {
    fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let keys = ArchKeys { gguf, arch: ARCHITECTURE };
        let DecoderDims { hidden_size, n_layers, n_heads, n_kv_heads, head_dim } = keys.decoder_dims()?;
        for suffix in SAME_AS_HEAD_SIZE {
            if keys.optional_usize(suffix, head_dim)? != head_dim {
                return Err(load_error(
                    gguf,
                    format!(
                        "metadata `{}` = {} is not supported: sliding layers must have the head size {head_dim}",
                        keys.key(suffix),
                        gguf.get(&keys.key(suffix)).map(Value::describe).unwrap_or_default()
                    ),
                ));
            }
        }
        keys.refuse_unless_off(MUST_BE_OFF)?;
        keys.refuse_rope_scaling()?;
        keys.refuse_non_causal()?;
        ReadTensors { layer: LAYER_TENSORS, model: VOCABULARY_TENSORS, n_layers }
            .refuse_others(gguf, unused_tensor_message)?;
        let sliding_window = match keys.optional_usize("attention.sliding_window", 0)? {
            0 => None,
            window => Some(window),
        };
        let sliding_layers = match sliding_window {
            None => vec![false; n_layers],
            Some(_) => sliding_pattern(gguf, n_layers)?,
        };
        let embedding_rows = gguf.tensor_info("token_embd.weight").and_then(|t| t.dims.get(1).copied()).unwrap_or(0);
        Ok(Self {
            name: gguf.get("general.name").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
            vocab_size: keys.optional_usize("vocab_size", embedding_rows)?,
            hidden_size,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_size: keys.usize("feed_forward_length")?,
            rope_theta: keys.float("rope.freq_base", Some(10_000.0))?,
            rope_theta_swa: keys.float("rope.freq_base_swa", Some(DEFAULT_SWA_ROPE_BASE))?,
            rms_eps: keys.float("attention.layer_norm_rms_epsilon", None)?,
            context_length: keys.usize("context_length")?,
            sliding_window,
            sliding_layers,
            attention_scale: attention_scale(n_layers, hidden_size, n_heads, head_dim),
        })
    }

    fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    fn qkv_row_len(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
    }

    fn attention_geometry(&self) -> attention::Geometry {
        attention::Geometry {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            qkv_row_len: self.qkv_row_len(),
            scale: self.attention_scale,
        }
    }

    fn span(&self, layer: usize) -> Span {
        match self.sliding_window {
            Some(window) if self.sliding_layers[layer] => Span::Window(window),
            _ => Span::Causal,
        }
    }
}

/// Which layers slide, from `attention.sliding_window_pattern` as llama.cpp reads it: an array
/// of one bool per layer, or a period `n` (layer `l` slides unless `l % n == n - 1`; 0 means
/// every layer slides), absent meaning period 6.
fn sliding_pattern(gguf: &GgufFile, n_layers: usize) -> Result<Vec<bool>> {
    let key = format!("{ARCHITECTURE}.attention.sliding_window_pattern");
    let period = match gguf.get(&key) {
        None => DEFAULT_SWA_PERIOD,
        Some(Value::Array(values)) => {
            let flags: Option<Vec<bool>> = values.iter().map(Value::as_bool).collect();
            return match flags {
                Some(flags) if flags.len() == n_layers => Ok(flags),
                _ => Err(gguf.wrong_type(
                    &key,
                    &format!("a period or {n_layers} bools (one per layer)"),
                    &values_of(values),
                )),
            };
        }
        Some(value) => value.as_u64().ok_or_else(|| gguf.wrong_type(&key, "a period or one bool per layer", value))?,
    };
    let period = period as usize;
    Ok((0..n_layers).map(|l| period == 0 || l % period < period - 1).collect())
}

fn values_of(values: &[Value]) -> Value {
    Value::Array(values.to_vec())
}

/// Tensors the forward reads in every layer (each `blk.N.{name}.weight`).
const LAYER_TENSORS: &[&str] = &[
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_q_norm",
    "attn_k_norm",
    "attn_output",
    "post_attention_norm",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "post_ffw_norm",
];

/// Why a tensor the gemma3 forward does not read (a bias, an embedding model's dense
/// projection, ...) is refused (see [`ReadTensors`]).
fn unused_tensor_message(name: &str) -> String {
    format!(
        "tensor `{name}` is not supported: the gemma3 forward does not use it, and ignoring a weight would compute wrong outputs"
    )
}

struct Layer {
    attn_norm: Vec<f32>,
    /// Wq, Wk and Wv stacked: gives `[q | k | v]` per row.
    qkv: StackedMatrix,
    q_norm: Vec<f32>,
    k_norm: Vec<f32>,
    attn_output: QMatrix,
    post_attention_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    /// Wgate and Wup stacked: gives `[gate | up]` per row.
    gate_up: StackedMatrix,
    down: QMatrix,
    post_ffw_norm: Vec<f32>,
}

/// A loaded Gemma 3 model.
pub struct Gemma3Model {
    config: Gemma3Config,
    /// Token embedding, final norm and output head.
    vocabulary: Vocabulary,
    /// `sqrt(hidden_size)`, rounded to f32 as llama.cpp does.
    embedding_scale: f32,
    layers: Vec<Layer>,
    /// `theta^(-2i / head_dim)` for each rotated pair `i`, for global and sliding layers.
    rope_frequencies_global: Vec<f64>,
    rope_frequencies_swa: Vec<f64>,
    pool: Arc<ThreadPool>,
    scratch: Mutex<Scratch>,
}

impl std::fmt::Debug for Gemma3Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gemma3Model").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Gemma3Model {
    /// Loads weights from an opened GGUF whose architecture is `gemma3`.
    pub fn load(gguf: &GgufFile, pool: Arc<ThreadPool>) -> Result<Self> {
        let config = Gemma3Config::from_gguf(gguf)?;
        let c = &config;
        let w = Weights { gguf };
        let vocabulary = Vocabulary::load(&w, c.vocab_size, c.hidden_size)?;
        let layers = (0..c.n_layers)
            .map(|l| {
                let name = |tensor: &str| layer_tensor(l, tensor);
                Ok(Layer {
                    attn_norm: w.vector(&name("attn_norm"), c.hidden_size)?,
                    qkv: w.attention_qkv(l, c.q_dim(), c.kv_dim(), c.hidden_size)?,
                    q_norm: w.vector(&name("attn_q_norm"), c.head_dim)?,
                    k_norm: w.vector(&name("attn_k_norm"), c.head_dim)?,
                    attn_output: w.matrix(&name("attn_output"), c.hidden_size, c.q_dim())?,
                    post_attention_norm: w.vector(&name("post_attention_norm"), c.hidden_size)?,
                    ffn_norm: w.vector(&name("ffn_norm"), c.hidden_size)?,
                    gate_up: w.ffn_gate_up(l, c.ffn_size, c.hidden_size)?,
                    down: w.matrix(&name("ffn_down"), c.hidden_size, c.ffn_size)?,
                    post_ffw_norm: w.vector(&name("post_ffw_norm"), c.hidden_size)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embedding_scale: (c.hidden_size as f32).sqrt(),
            rope_frequencies_global: rope::frequencies(c.rope_theta, c.head_dim),
            rope_frequencies_swa: rope::frequencies(c.rope_theta_swa, c.head_dim),
            config,
            vocabulary,
            layers,
            pool,
            scratch: Mutex::new(Scratch::default()),
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &Gemma3Config {
        &self.config
    }

    /// A KV cache sized for this model: `num_blocks` blocks of `block_size` positions.
    ///
    /// Every layer, sliding or not, keeps every position's K/V in one pool: sliding layers
    /// only *read* the window (see [`Span`]). The engine uses
    /// [`Self::new_kv_storage_with_sliding_pool`].
    pub fn new_kv_storage(&self, num_blocks: usize, block_size: usize) -> KvStorage {
        KvStorage::new(self.config.n_layers, num_blocks, block_size, self.config.n_kv_heads, self.config.head_dim)
    }

    /// A KV cache whose global layers have `num_blocks` blocks and whose sliding-window layers
    /// have a pool of their own of `sliding_blocks`, read through each chunk's
    /// `sliding_block_table`, whose blocks before the window may be given back. One pool, as
    /// [`Self::new_kv_storage`], when no layer slides.
    pub fn new_kv_storage_with_sliding_pool(
        &self,
        num_blocks: usize,
        sliding_blocks: usize,
        block_size: usize,
    ) -> KvStorage {
        let c = &self.config;
        let sliding: Vec<bool> = match c.sliding_window {
            Some(_) => c.sliding_layers.clone(),
            None => vec![false; c.n_layers],
        };
        KvStorage::with_sliding_pool(&sliding, num_blocks, sliding_blocks, block_size, c.n_kv_heads, c.head_dim)
    }

    /// The thread pool the forward runs on.
    pub(crate) fn pool(&self) -> &ThreadPool {
        &self.pool
    }

    /// One batched step over all chunks, with the contract of
    /// [`crate::models::llama::LlamaModel::forward`].
    pub fn forward(&self, chunks: &[SeqChunk<'_>], kv: &mut KvStorage, logits: &mut Vec<f32>) -> Result<()> {
        LogitRows::all_logits(logits, |rows| self.forward_rows(chunks, kv, rows))
    }

    /// [`Self::forward`] with the head's work per logit row chosen by the caller (see
    /// [`LogitRows`]).
    pub fn forward_rows(&self, chunks: &[SeqChunk<'_>], kv: &mut KvStorage, rows: &mut LogitRows) -> Result<()> {
        let c = &self.config;
        check_chunks(chunks, kv, c.n_layers, c.kv_dim(), c.vocab_size)?;
        self.check_sliding_pool(chunks, kv)?;
        let pool = &*self.pool;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *scratch;
        let geometry = c.attention_geometry();
        s.step.prepare(chunks, &geometry, c.hidden_size, c.ffn_size);
        s.rope_global.fill(&s.step.rows, &self.rope_frequencies_global);
        s.rope_swa.fill(&s.step.rows, &self.rope_frequencies_swa);
        let (rope_global, rope_swa, s) = (&s.rope_global, &s.rope_swa, &mut s.step);
        let n = s.rows.len();

        self.vocabulary.embed(&s.rows, &mut s.x, c.hidden_size);
        s.x.iter_mut().for_each(|v| *v *= self.embedding_scale);
        if let Some(first) = self.layers.first() {
            s.norm_first_layer_input(&first.attn_norm, c.rms_eps, pool);
        }
        let mut n_rows = n;
        for (l, layer) in self.layers.iter().enumerate() {
            // `normed` holds this layer's input: `x` normalised with `attn_norm`.
            s.project_qkv(&layer.qkv, pool);
            QkvRowPrep {
                bias: None,
                head_norms: Some(HeadNorms { query: &layer.q_norm, key: &layer.k_norm, eps: c.rms_eps }),
                style: RopeStyle::Neox,
                rope: if c.sliding_layers[l] { rope_swa } else { rope_global },
            }
            .apply(&mut s.qkv, &geometry, pool);
            if l + 1 == self.layers.len() {
                n_rows = s.attend_logit_rows(&geometry, l, c.span(l), chunks, kv, pool);
            } else {
                s.attend(&geometry, l, c.span(l), chunks, kv, pool);
            }
            s.project(&layer.attn_output, n_rows, pool);
            // x += post_attention_norm(attention); normed = ffn_norm(x).
            s.add_residual(Some(&layer.post_attention_norm), Some(&layer.ffn_norm), c.rms_eps, n_rows, pool);
            s.gated_ffn(&layer.gate_up, geglu_tanh_rows, &layer.down, c.ffn_size, n_rows, pool);
            // x += post_ffw_norm(ffn); normed = the next layer's attn_norm(x).
            let next_norm = self.layers.get(l + 1).map(|next| &next.attn_norm[..]);
            s.add_residual(Some(&layer.post_ffw_norm), next_norm, c.rms_eps, n_rows, pool);
        }

        self.vocabulary.logits_of_kept_rows(n_rows, c.rms_eps, s, rows, pool);
        Ok(())
    }
}

impl Gemma3Model {
    /// With a sliding pool in `kv`: it must hold exactly the sliding layers, and every chunk's
    /// sliding table must cover its window.
    fn check_sliding_pool(&self, chunks: &[SeqChunk<'_>], kv: &KvStorage) -> Result<()> {
        let c = &self.config;
        if !kv.has_sliding_pool() {
            return Ok(());
        }
        let misplaced = (0..c.n_layers).find(|&l| (kv.pool_of(l) == KvPool::Sliding) != (c.span(l) != Span::Causal));
        match (c.sliding_window, misplaced) {
            (Some(window), None) => check_sliding_tables(chunks, kv, window),
            _ => Err(crate::error::Error::Internal(format!(
                "the KV storage's sliding pool does not hold exactly the sliding layers (layer {misplaced:?})"
            ))),
        }
    }
}

/// Per-step buffers: the shared ones and the RoPE rotation of each row, for global layers
/// and for sliding ones.
#[derive(Default)]
struct Scratch {
    step: StepScratch,
    rope_global: RopeTable,
    rope_swa: RopeTable,
}

#[cfg(test)]
mod tests {
    use super::attention_scale;

    #[test]
    fn attention_scale_is_the_head_size_but_for_the_27b() {
        // Gemma 3 270M: 18 layers, head size 256.
        assert_eq!(attention_scale(18, 640, 4, 256), 1.0 / 16.0);
        // Gemma 3 27B: 62 layers, query_pre_attn_scalar = 5376 / 32 = 168, head size 128.
        assert_eq!(attention_scale(62, 5376, 32, 128), 1.0 / (168f32).sqrt());
    }
}
