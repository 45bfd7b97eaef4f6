//! Qwen 2 / Qwen 2.5 (`general.architecture = qwen2`) and Qwen 3 (`qwen3`) decoders, with the
//! same batched forward over the paged KV cache as [`crate::models::llama`].
//!
//! Both are llama's block (RMS norms, SwiGLU FFN, grouped-query attention scaled by
//! `1/sqrt(head_dim)`) with, read from the GGUF and honoured:
//! - RoPE in NEOX order (pairs `(x[i], x[i + head_dim/2])`: the converter does not permute
//!   Qwen's Wq/Wk as it does llama's), base `rope.freq_base`;
//! - Q/K/V biases (`blk.N.attn_{q,k,v}.bias`; every Qwen 2 has them, llama.cpp adds each one
//!   present for either family);
//! - Qwen 3 only: per-head RMS norms on queries and keys before RoPE (`attn_q_norm`,
//!   `attn_k_norm`, required), and a head size `attention.key_length` that need not be
//!   `hidden / heads`;
//! - the output head tied to the token embedding when `output.weight` is absent.
//!
//! One file for both because the two graphs (llama.cpp's `qwen2.cpp` and `qwen3.cpp`) differ
//! only in the Q/K norms: one forward with the norms as an option, rather than a copy of it.
//! RoPE scaling (YaRN, which Qwen's model cards suggest for long contexts), sliding windows and
//! every other option is refused at load, naming the key or tensor.

use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::gguf::GgufFile;
use crate::kv_cache::KvStorage;
use crate::models::attention::{self, Span};
use crate::models::llama::RopeStyle;
use crate::models::metadata::{ArchKeys, MustBeOff, DENSE_DECODER_MUST_BE_OFF, ROPE_SCALING_WHY};
use crate::models::rope::{self, QkvRowPrep, RopeTable};
use crate::models::stacked::StackedMatrix;
use crate::models::step::{StepScratch, SwigluFfn};
use crate::models::tensors::ReadTensors;
use crate::models::vocabulary::{LogitRows, Vocabulary, VOCABULARY_TENSORS};
use crate::models::weights::{layer_tensor, Weights};
use crate::models::{check_chunks, SeqChunk};
use crate::quant::QMatrix;
use crate::threadpool::ThreadPool;

/// Which of the two architectures a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QwenFamily {
    Qwen2,
    Qwen3,
}

impl QwenFamily {
    fn architecture(self) -> &'static str {
        match self {
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
        }
    }

    /// Per-layer tensors the forward reads.
    fn layer_tensors(self) -> Vec<&'static str> {
        let head_norms = if self.has_qk_norm() { HEAD_NORM_TENSORS } else { &[] };
        [LAYER_TENSORS, head_norms].concat()
    }

    fn has_qk_norm(self) -> bool {
        self == Self::Qwen3
    }
}

/// Per-layer tensors both families' forwards read (the biases only when present).
const LAYER_TENSORS: &[&str] = &[
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_q.bias",
    "attn_k.bias",
    "attn_v.bias",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// Qwen 3's per-head norms, read besides [`LAYER_TENSORS`].
const HEAD_NORM_TENSORS: &[&str] = &["attn_q_norm", "attn_k_norm"];

/// `{arch}.*` keys Qwen refuses unless off, beside [`DENSE_DECODER_MUST_BE_OFF`].
const QWEN_MUST_BE_OFF: &MustBeOff = &[
    ("attention.sliding_window", &[0.0], "sliding-window attention is not implemented for this architecture"),
    // llama.cpp reads both as RoPE scaling for every architecture.
    ("rope.scale_linear", &[0.0, 1.0], ROPE_SCALING_WHY),
    ("rope.scaling.attn_factor", &[0.0, 1.0], ROPE_SCALING_WHY),
];

/// Hyperparameters, read from the GGUF `{qwen2,qwen3}.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct QwenConfig {
    pub family: QwenFamily,
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

impl QwenConfig {
    fn from_gguf(gguf: &GgufFile, family: QwenFamily) -> Result<Self> {
        let keys = ArchKeys { gguf, arch: family.architecture() };
        let dims = keys.decoder_dims()?;
        keys.refuse_rope_scaling()?;
        keys.refuse_unless_off(DENSE_DECODER_MUST_BE_OFF)?;
        keys.refuse_unless_off(QWEN_MUST_BE_OFF)?;
        keys.refuse_non_causal()?;
        ReadTensors { layer: &family.layer_tensors(), model: VOCABULARY_TENSORS, n_layers: dims.n_layers }
            .refuse_others(gguf, |name| unused_tensor_message(family, name))?;
        let embedding_rows = gguf.tensor_info("token_embd.weight").and_then(|t| t.dims.get(1).copied()).unwrap_or(0);
        Ok(Self {
            family,
            name: gguf.get("general.name").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
            vocab_size: keys.optional_usize("vocab_size", embedding_rows)?,
            hidden_size: dims.hidden_size,
            n_layers: dims.n_layers,
            n_heads: dims.n_heads,
            n_kv_heads: dims.n_kv_heads,
            head_dim: dims.head_dim,
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

/// Why a tensor the forward does not read is refused (see [`ReadTensors`]).
fn unused_tensor_message(family: QwenFamily, name: &str) -> String {
    format!(
        "tensor `{name}` is not supported: the {} forward does not use it, and ignoring a weight would compute wrong outputs",
        family.architecture()
    )
}

/// Qwen 3's per-head norm weights.
struct HeadNorms {
    query: Vec<f32>,
    key: Vec<f32>,
}

struct Layer {
    attn_norm: Vec<f32>,
    /// Wq, Wk and Wv stacked: gives `[q | k | v]` per row.
    qkv: StackedMatrix,
    /// `[q bias | k bias | v bias]` (zeros for a part the file has no bias for); `None` when
    /// the file has none.
    qkv_bias: Option<Vec<f32>>,
    head_norms: Option<HeadNorms>,
    attn_output: QMatrix,
    ffn: SwigluFfn,
}

/// A loaded Qwen 2 or Qwen 3 model.
pub struct QwenModel {
    config: QwenConfig,
    /// Token embedding, final norm and output head.
    vocabulary: Vocabulary,
    layers: Vec<Layer>,
    /// `theta^(-2i / head_dim)` for each rotated pair `i`.
    rope_frequencies: Vec<f64>,
    pool: Arc<ThreadPool>,
    /// Buffers reused by every step, so a warmed-up step does not allocate.
    scratch: Mutex<Scratch>,
}

impl std::fmt::Debug for QwenModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QwenModel").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Per-step buffers: the shared ones and the RoPE rotation of each row.
#[derive(Default)]
struct Scratch {
    step: StepScratch,
    rope: RopeTable,
}

impl QwenModel {
    /// Loads weights from an opened GGUF whose architecture is `family`'s.
    pub fn load(gguf: &GgufFile, family: QwenFamily, pool: Arc<ThreadPool>) -> Result<Self> {
        let config = QwenConfig::from_gguf(gguf, family)?;
        let c = &config;
        let w = Weights { gguf };
        let vocabulary = Vocabulary::load(&w, c.vocab_size, c.hidden_size)?;
        let layers = (0..c.n_layers).map(|l| load_layer(&w, c, l)).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            rope_frequencies: rope::frequencies(c.rope_theta, c.head_dim),
            config,
            vocabulary,
            layers,
            pool,
            scratch: Mutex::new(Scratch::default()),
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &QwenConfig {
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
            QkvRowPrep {
                bias: layer.qkv_bias.as_deref(),
                head_norms: layer.head_norms.as_ref().map(|n| rope::HeadNorms {
                    query: &n.query,
                    key: &n.key,
                    eps: c.rms_eps,
                }),
                style: RopeStyle::Neox,
                rope,
            }
            .apply(&mut s.qkv, &geometry, pool);
            if l + 1 == self.layers.len() {
                n_rows = s.attend_logit_rows(&geometry, l, Span::Causal, chunks, kv, pool);
            } else {
                s.attend(&geometry, l, Span::Causal, chunks, kv, pool);
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

fn load_layer(w: &Weights<'_>, c: &QwenConfig, l: usize) -> Result<Layer> {
    let name = |tensor: &str| layer_tensor(l, tensor);
    let head_norms = if c.family.has_qk_norm() {
        Some(HeadNorms {
            query: w.vector(&name("attn_q_norm"), c.head_dim)?,
            key: w.vector(&name("attn_k_norm"), c.head_dim)?,
        })
    } else {
        None
    };
    Ok(Layer {
        attn_norm: w.vector(&name("attn_norm"), c.hidden_size)?,
        qkv: w.attention_qkv(l, c.q_dim(), c.kv_dim(), c.hidden_size)?,
        qkv_bias: qkv_bias(w, l, c)?,
        head_norms,
        attn_output: w.matrix(&name("attn_output"), c.hidden_size, c.q_dim())?,
        ffn: SwigluFfn {
            norm: w.vector(&name("ffn_norm"), c.hidden_size)?,
            gate_up: w.ffn_gate_up(l, c.ffn_size, c.hidden_size)?,
            down: w.matrix(&name("ffn_down"), c.hidden_size, c.ffn_size)?,
        },
    })
}

/// Layer `l`'s Q, K and V biases laid out as a fused `[q | k | v]` row, each part zero when its
/// tensor is absent; `None` when all three are.
fn qkv_bias(w: &Weights<'_>, l: usize, c: &QwenConfig) -> Result<Option<Vec<f32>>> {
    let parts = [("attn_q", c.q_dim()), ("attn_k", c.kv_dim()), ("attn_v", c.kv_dim())];
    let names = parts.map(|(tensor, _)| format!("blk.{l}.{tensor}.bias"));
    if names.iter().all(|name| w.gguf.tensor_info(name).is_none()) {
        return Ok(None);
    }
    let mut bias = Vec::with_capacity(c.q_dim() + 2 * c.kv_dim());
    for (name, (_, len)) in names.iter().zip(parts) {
        match w.gguf.tensor_info(name) {
            Some(_) => bias.extend(w.vector(name, len)?),
            None => bias.resize(bias.len() + len, 0.0),
        }
    }
    Ok(Some(bias))
}
