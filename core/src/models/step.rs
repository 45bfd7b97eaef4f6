//! The buffers one batched decoder step works in, shared by every architecture's forward.

use crate::models::attention::{AttentionScratch, Geometry};
use crate::models::rows::{fill_rows, RowInfo};
use crate::models::SeqChunk;

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
        self.attention.plan(chunks, g);
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
