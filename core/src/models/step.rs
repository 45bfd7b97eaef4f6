//! The buffers one batched decoder step works in, shared by every architecture's forward.

use crate::kv_cache::KvStorage;
use crate::models::attention::{self, AttentionScratch, Geometry, Span};
use crate::models::elementwise::{residual_add_then_norm, rms_norm_and_quantize_rows, swiglu_rows, ResidualNorms};
use crate::models::kv_write::store_keys_and_values;
use crate::models::rows::{fill_rows, RowInfo};
use crate::models::stacked::StackedMatrix;
use crate::models::SeqChunk;
use crate::quant::{Q8Block, QMatrix, ACTIVATION_BLOCK};
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
    /// `normed` quantized row by row by the pass that wrote it (for the QKV and gate/up
    /// matmuls: see [`crate::quant::QMatrix::matmul_prequantized`]); empty when the hidden
    /// size is not a whole number of blocks.
    pub normed_quantized: Vec<Q8Block>,
    /// `ffn_hidden` quantized likewise, for the down projection.
    pub ffn_hidden_quantized: Vec<Q8Block>,
    /// `attn` quantized likewise by the attention tasks, for the output projection; empty
    /// when the head dimension is not a whole number of blocks
    /// ([`attention::quantized_output_blocks`]).
    pub attn_quantized: Vec<Q8Block>,
    /// The rows of `attn` the attention has written and quantized this layer, in order from
    /// the first: what `project` may take from `attn_quantized`.
    attn_quantized_rows: usize,
    pub attention: AttentionScratch,
}

/// The blocks one row of `width` values quantizes to, or 0 when it cannot be (only float
/// matrices take such rows).
fn blocks_per_row(width: usize) -> usize {
    if width.is_multiple_of(ACTIVATION_BLOCK) {
        width / ACTIVATION_BLOCK
    } else {
        0
    }
}

/// The blocks of the attention output's rows `rows` in `quantized` (`None` when the attention
/// output is not quantized).
fn attn_blocks<'a>(quantized: &'a mut [Q8Block], g: &Geometry, rows: std::ops::Range<usize>) -> Option<&'a mut [Q8Block]> {
    let per_row = attention::quantized_output_blocks(g);
    (per_row > 0).then(|| &mut quantized[rows.start * per_row..rows.end * per_row])
}

/// The first `n_rows` rows' blocks of `quantized` (`None` when rows cannot be quantized).
fn quantized_rows(quantized: &mut [Q8Block], n_rows: usize, width: usize) -> Option<&mut [Q8Block]> {
    let per_row = blocks_per_row(width);
    (per_row > 0).then(|| &mut quantized[..n_rows * per_row])
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
        self.normed_quantized.resize(n * blocks_per_row(hidden_size), Q8Block::default());
        self.ffn_hidden_quantized.resize(n * blocks_per_row(ffn_size), Q8Block::default());
        self.attn_quantized.resize(n * attention::quantized_output_blocks(g), Q8Block::default());
        self.attn_quantized_rows = 0;
    }

    /// The first layer's input: `normed` = `x` normalised with `norm` (quantized as well).
    pub fn norm_first_layer_input(&mut self, norm: &[f32], rms_eps: f32, pool: &ThreadPool) {
        let n_rows = self.rows.len();
        let quantized = quantized_rows(&mut self.normed_quantized, n_rows, norm.len());
        rms_norm_and_quantize_rows(&self.x, norm, rms_eps, &mut self.normed, quantized, pool);
    }

    /// `qkv = Wqkv · normed` over every row of the step, from `normed`'s quantized rows.
    pub fn project_qkv(&mut self, qkv: &StackedMatrix, pool: &ThreadPool) {
        let n_rows = self.rows.len();
        let width = self.normed.len() / n_rows.max(1);
        let quantized = quantized_rows(&mut self.normed_quantized, n_rows, width).map(|q| &*q);
        qkv.matmul_prequantized(&self.normed, quantized, n_rows, &mut self.qkv, pool);
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
    /// this step's keys and values in layer `layer` of `kv` and attends over `span`, into
    /// `attn`.
    #[allow(clippy::too_many_arguments)]
    pub fn attend(
        &mut self,
        g: &Geometry,
        layer: usize,
        span: Span,
        chunks: &[SeqChunk<'_>],
        kv: &mut KvStorage,
        pool: &ThreadPool,
    ) {
        store_keys_and_values(&self.qkv, g, layer, chunks, kv);
        let n_rows = self.rows.len();
        let quantized = attn_blocks(&mut self.attn_quantized, g, 0..n_rows);
        let attn = &mut self.attn[..n_rows * g.q_dim()];
        attention::attend(&mut self.attention, g, layer, span, chunks, kv, &self.qkv, attn, quantized, pool);
        self.attn_quantized_rows = n_rows;
    }

    /// [`Self::attend`] for the last layer: stores every row's keys and values, but attends
    /// only for the rows whose logits are wanted (the last row of each chunk with
    /// `want_logits`), moved first to the front of `x` and `qkv`, in chunk order; returns how
    /// many there are. Past the last attention no row depends on another, and only these rows
    /// reach the output head, so the rest of the last layer runs on them alone (in a prefill
    /// chunk of 512 tokens, 1 row instead of 512: the last layer's attention, output
    /// projection and FFN). Each kept row is attended as a one-token chunk at its own
    /// position, which gives the bits it gets inside its chunk (attention is batch- and
    /// chunk-invariant), so no result changes.
    #[allow(clippy::too_many_arguments)]
    pub fn attend_logit_rows(
        &mut self,
        g: &Geometry,
        layer: usize,
        span: Span,
        chunks: &[SeqChunk<'_>],
        kv: &mut KvStorage,
        pool: &ThreadPool,
    ) -> usize {
        store_keys_and_values(&self.qkv, g, layer, chunks, kv);
        let n_kept = self.keep_logit_rows(chunks, g);
        // Without allocating (a warm step allocates nothing): a run of one-token chunks that
        // want logits (decode) is attended as it is, in one call; a longer chunk's last token
        // as a one-token chunk of its own.
        let (mut kept, mut i) = (0, 0);
        while i < chunks.len() {
            let run = chunks[i..].iter().take_while(|c| c.want_logits && c.tokens.len() == 1).count();
            if run > 0 {
                self.attend_kept_rows(g, layer, span, &chunks[i..i + run], kept, kv, pool);
                (kept, i) = (kept + run, i + run);
                continue;
            }
            if chunks[i].want_logits {
                let last = last_token_chunk(&chunks[i]);
                self.attend_kept_rows(g, layer, span, std::slice::from_ref(&last), kept, kv, pool);
                kept += 1;
            }
            i += 1;
        }
        debug_assert_eq!(kept, n_kept);
        n_kept
    }

    /// Attention for one-token `chunks` whose rows sit at `first..` of `qkv`, into the same
    /// rows of `attn`.
    #[allow(clippy::too_many_arguments)]
    fn attend_kept_rows(
        &mut self,
        g: &Geometry,
        layer: usize,
        span: Span,
        chunks: &[SeqChunk<'_>],
        first: usize,
        kv: &KvStorage,
        pool: &ThreadPool,
    ) {
        let rows = first..first + chunks.len();
        // Rows are attended in order from the first kept one (`attend_logit_rows`).
        debug_assert!(first == 0 || first == self.attn_quantized_rows);
        let quantized = attn_blocks(&mut self.attn_quantized, g, rows.clone());
        let qkv = &self.qkv[rows.start * g.qkv_row_len..rows.end * g.qkv_row_len];
        let attn = &mut self.attn[rows.start * g.q_dim()..rows.end * g.q_dim()];
        attention::attend(&mut self.attention, g, layer, span, chunks, kv, qkv, attn, quantized, pool);
        self.attn_quantized_rows = rows.end;
    }

    /// Moves the rows whose logits are wanted (the last row of each chunk with `want_logits`)
    /// to the front of `x` and `qkv`, in chunk order, and returns how many there are.
    pub fn keep_logit_rows(&mut self, chunks: &[SeqChunk<'_>], g: &Geometry) -> usize {
        let (hidden, qkv_len) = (self.x.len() / self.rows.len().max(1), g.qkv_row_len);
        let (mut kept, mut end) = (0, 0);
        for chunk in chunks {
            end += chunk.tokens.len();
            if !chunk.want_logits {
                continue;
            }
            let row = end - 1;
            if row != kept {
                self.x.copy_within(row * hidden..(row + 1) * hidden, kept * hidden);
                self.qkv.copy_within(row * qkv_len..(row + 1) * qkv_len, kept * qkv_len);
            }
            kept += 1;
        }
        kept
    }

    /// The attention output projection of the first `n_rows` rows: `projected = attn_output ·
    /// attn`.
    pub fn project(&mut self, attn_output: &QMatrix, n_rows: usize, pool: &ThreadPool) {
        let (q_dim, hidden) = (attn_output.cols(), attn_output.rows());
        let (attn, out) = (&self.attn[..n_rows * q_dim], &mut self.projected[..n_rows * hidden]);
        // Taken once: the next layer's attention quantizes its own rows again.
        let quantized_rows = std::mem::take(&mut self.attn_quantized_rows);
        let per_row = self.attn_quantized.len() / self.rows.len().max(1);
        match &self.attn_quantized[..] {
            quantized if per_row * ACTIVATION_BLOCK == q_dim && quantized_rows >= n_rows => {
                attn_output.matmul_prequantized(attn, &quantized[..n_rows * per_row], n_rows, out, pool)
            }
            _ => attn_output.matmul(attn, n_rows, out, pool),
        }
    }

    /// The FFN of the first `n_rows` rows of `normed` (already normalised with the FFN's norm,
    /// which the caller fuses with the residual add before it): `projected = down(swiglu(gate_up
    /// · normed))`.
    pub fn swiglu_ffn(&mut self, ffn: &SwigluFfn, ffn_size: usize, n_rows: usize, pool: &ThreadPool) {
        self.gated_ffn(&ffn.gate_up, swiglu_rows, &ffn.down, ffn_size, n_rows, pool)
    }

    /// A gated FFN of the first `n_rows` rows of `normed` (normalised, and quantized, by the
    /// residual pass before it): `projected = down(activate(gate_up · normed))`, where
    /// `activate` maps `[gate | up]` rows to hidden rows and quantizes them for `down` in the
    /// same pass (see [`crate::models::elementwise::swiglu_rows`]).
    pub fn gated_ffn(
        &mut self,
        gate_up: &StackedMatrix,
        activate: GatedActivation,
        down: &QMatrix,
        ffn_size: usize,
        n_rows: usize,
        pool: &ThreadPool,
    ) {
        let hidden = down.rows();
        let gate_up_rows = &mut self.gate_up[..n_rows * 2 * ffn_size];
        let normed_quantized = quantized_rows(&mut self.normed_quantized, n_rows, hidden).map(|q| &*q);
        gate_up.matmul_prequantized(&self.normed[..n_rows * hidden], normed_quantized, n_rows, gate_up_rows, pool);
        let hidden_units = &mut self.ffn_hidden[..n_rows * ffn_size];
        let hidden_quantized = quantized_rows(&mut self.ffn_hidden_quantized, n_rows, ffn_size);
        activate(gate_up_rows, ffn_size, hidden_units, hidden_quantized, pool);
        let hidden_quantized = quantized_rows(&mut self.ffn_hidden_quantized, n_rows, ffn_size);
        let out = &mut self.projected[..n_rows * hidden];
        match hidden_quantized {
            Some(quantized) => down.matmul_prequantized(hidden_units, quantized, n_rows, out, pool),
            None => down.matmul(hidden_units, n_rows, out, pool),
        }
    }

    /// The residual add of the first `n_rows` rows fused with the norm after it (see
    /// [`residual_add_then_norm`]): `x += projected`, or `x += rms_norm(projected) · post`
    /// (Gemma's post-block norms), then `normed` = `x` normalised with `next` (the next
    /// block's input; nothing after the last layer).
    pub fn add_residual(
        &mut self,
        post: Option<&[f32]>,
        next: Option<&[f32]>,
        rms_eps: f32,
        n_rows: usize,
        pool: &ThreadPool,
    ) {
        let width = self.x.len() / self.rows.len().max(1);
        let norms = ResidualNorms { width, post, next, eps: rms_eps };
        let rows = ..n_rows * width;
        let quantized = quantized_rows(&mut self.normed_quantized, n_rows, width);
        residual_add_then_norm(
            &mut self.x[rows],
            &self.projected[rows],
            norms,
            &mut self.normed[rows],
            quantized,
            pool,
        );
    }
}

/// A gated FFN's activation over `[gate | up]` rows (`ffn_size` each) into hidden rows,
/// quantizing each hidden row when given blocks: [`swiglu_rows`] or
/// [`crate::models::elementwise::geglu_tanh_rows`].
pub(crate) type GatedActivation = fn(&[f32], usize, &mut [f32], Option<&mut [Q8Block]>, &ThreadPool);

/// `chunk`'s last token alone, at its position, with the same block tables.
fn last_token_chunk<'a>(chunk: &SeqChunk<'a>) -> SeqChunk<'a> {
    let last = chunk.tokens.len().saturating_sub(1);
    SeqChunk { tokens: &chunk.tokens[last..], start_pos: chunk.start_pos + last, ..*chunk }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_logit_rows_moves_each_wanting_chunks_last_row_to_the_front_in_order() {
        let g = Geometry { n_heads: 2, n_kv_heads: 1, head_dim: 2, qkv_row_len: 8, scale: 1.0 };
        let tokens = [0u32; 5];
        let chunk = |len: usize, want_logits: bool| SeqChunk {
            tokens: &tokens[..len],
            start_pos: 0,
            block_table: &[],
            sliding_block_table: &[],
            want_logits,
        };
        // Rows 0..3 (wants: row 2), 3..8 (no), 8 (wants: row 8), 9..11 (wants: row 10).
        let chunks = [chunk(3, true), chunk(5, false), chunk(1, true), chunk(2, true)];
        let mut s = StepScratch::default();
        s.prepare(&chunks, &g, 3, 4);
        let n = s.rows.len();
        assert_eq!(n, 11);
        s.x = (0..n * 3).map(|i| i as f32).collect();
        s.qkv = (0..n * g.qkv_row_len).map(|i| -(i as f32)).collect();
        assert_eq!(s.keep_logit_rows(&chunks, &g), 3);
        for (kept, row) in [2usize, 8, 10].into_iter().enumerate() {
            let x_row: Vec<f32> = (row * 3..row * 3 + 3).map(|i| i as f32).collect();
            assert_eq!(s.x[kept * 3..kept * 3 + 3], x_row[..], "x of row {row}");
            let qkv_row: Vec<f32> = (row * 8..row * 8 + 8).map(|i| -(i as f32)).collect();
            assert_eq!(s.qkv[kept * 8..kept * 8 + 8], qkv_row[..], "qkv of row {row}");
        }
    }
}
