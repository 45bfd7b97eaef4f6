//! The buffers one batched decoder step works in, shared by every architecture's forward.

use crate::kv_cache::KvStorage;
use crate::models::attention::{self, AttentionScratch, Geometry, Span};
use crate::models::elementwise::{residual_add_then_norm, swiglu_rows, ResidualNorms};
use crate::models::kv_write::store_keys_and_values;
use crate::models::rows::{fill_rows, RowInfo};
use crate::models::stacked::StackedMatrix;
use crate::models::SeqChunk;
use crate::quant::QMatrix;
use crate::threadpool::ThreadPool;

/// Per-step buffers (row-major, one row per token of the step unless noted), reused by every
/// step so a warmed-up step does not allocate.
#[derive(Default)]
pub(crate) struct StepScratch {
    pub rows: Vec<RowInfo>,
    /// The residual stream.
    pub x: Vec<f32>,
    pub normed: Vec<f32>,
    pub qkv: Vec<f32>,
    pub attn: Vec<f32>,
    /// Output of the attention output projection, then of the down projection.
    pub projected: Vec<f32>,
    pub gate_up: Vec<f32>,
    pub ffn_hidden: Vec<f32>,
    pub attention: AttentionScratch,
    /// Final hidden states of the rows that want logits.
    pub logit_inputs: Vec<f32>,
}

impl StepScratch {
    /// Fills this step's rows and sizes every buffer for them (growing only, so warm steps do
    /// not allocate).
    pub fn prepare(&mut self, chunks: &[SeqChunk<'_>], g: &Geometry, hidden_size: usize, ffn_size: usize) {
        fill_rows(chunks, &mut self.rows);
        let n = self.rows.len();
        self.x.resize(n * hidden_size, 0.0);
        self.normed.resize(n * hidden_size, 0.0);
        self.qkv.resize(n * g.qkv_row_len, 0.0);
        self.attn.resize(n * g.q_dim(), 0.0);
        self.projected.resize(n * hidden_size, 0.0);
        self.gate_up.resize(n * 2 * ffn_size, 0.0);
        self.ffn_hidden.resize(n * ffn_size, 0.0);
    }
}

/// A llama-style feed-forward block: `rms_norm` with `norm`, `[gate | up]` projections, SwiGLU,
/// `down` projection.
pub(crate) struct SwigluFfn {
    pub norm: Vec<f32>,
    /// Wgate and Wup stacked: gives `[gate | up]` per row.
    pub gate_up: StackedMatrix,
    pub down: QMatrix,
}

impl StepScratch {
    /// Attention after the step's `qkv` rows are final (biases, norms and RoPE applied): stores
    /// this step's keys and values in layer `layer` of `kv`, attends over `span`, and writes the
    /// output projection `attn_output · attn` into `projected`.
    #[allow(clippy::too_many_arguments)]
    pub fn attend_and_project(
        &mut self,
        g: &Geometry,
        layer: usize,
        span: Span,
        chunks: &[SeqChunk<'_>],
        kv: &mut KvStorage,
        attn_output: &QMatrix,
        pool: &ThreadPool,
    ) {
        store_keys_and_values(&self.qkv, g, layer, chunks, kv);
        attention::attend(&mut self.attention, g, layer, span, chunks, kv, &self.qkv, &mut self.attn, pool);
        attn_output.matmul(&self.attn, self.rows.len(), &mut self.projected, pool);
    }

    /// The FFN of the rows in `normed` (already normalised with the FFN's norm, which the
    /// caller fuses with the residual add before it): `projected = down(swiglu(gate_up ·
    /// normed))`.
    pub fn swiglu_ffn(&mut self, ffn: &SwigluFfn, ffn_size: usize, pool: &ThreadPool) {
        let n = self.rows.len();
        ffn.gate_up.matmul(&self.normed, n, &mut self.gate_up, pool);
        swiglu_rows(&self.gate_up, ffn_size, &mut self.ffn_hidden, pool);
        ffn.down.matmul(&self.ffn_hidden, n, &mut self.projected, pool);
    }

    /// A llama-style layer's two residual adds, each fused with the norm after it (see
    /// [`residual_add_then_norm`]): after attention, `x += projected` and `normed` = the FFN's
    /// input; after the FFN, `x += projected` and `normed` = the next layer's input
    /// (`next_norm`), or nothing after the last layer.
    pub fn add_residual(&mut self, next_norm: Option<&[f32]>, rms_eps: f32, pool: &ThreadPool) {
        let width = self.x.len() / self.rows.len().max(1);
        let norms = ResidualNorms { width, post: None, next: next_norm, eps: rms_eps };
        residual_add_then_norm(&mut self.x, &self.projected, norms, &mut self.normed, pool);
    }
}
