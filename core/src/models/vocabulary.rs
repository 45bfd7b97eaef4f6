//! The two ends of a decoder: token ids into hidden states (the embedding), and at the end of
//! a step the final RMS norm and output head, over only the rows that want logits (the last
//! row of each chunk with `want_logits`).

use crate::models::elementwise::rms_norm_rows;
use crate::models::rows::RowInfo;
use crate::models::step::StepScratch;
use crate::models::weights::Weights;
use crate::quant::QMatrix;
use crate::threadpool::ThreadPool;

/// Tensors outside the layers that [`Vocabulary`] reads (`output.weight` is optional).
pub(crate) const VOCABULARY_TENSORS: &[&str] = &["token_embd.weight", "output_norm.weight", "output.weight"];

pub(crate) struct Vocabulary {
    pub token_embedding: QMatrix,
    /// Weights of the final RMS norm.
    pub output_norm: Vec<f32>,
    /// `None` when the token embedding doubles as the output head (tied weights).
    pub output: Option<QMatrix>,
}

impl Vocabulary {
    /// Reads `token_embd.weight` and `output.weight` (optional: tied to the embedding when
    /// absent), both `vocab_size × hidden`, and `output_norm.weight`.
    pub fn load(w: &Weights<'_>, vocab_size: usize, hidden: usize) -> crate::error::Result<Self> {
        Ok(Self {
            token_embedding: w.matrix("token_embd.weight", vocab_size, hidden)?,
            output_norm: w.vector("output_norm.weight", hidden)?,
            output: w.optional_matrix("output.weight", vocab_size, hidden)?,
        })
    }

    /// Writes each row's token embedding into its row of `x` (`hidden` values per row).
    pub fn embed(&self, rows: &[RowInfo], x: &mut [f32], hidden: usize) {
        for (row, x) in rows.iter().zip(x.chunks_exact_mut(hidden)) {
            self.token_embedding.dequantize_row(row.token as usize, x);
        }
    }

    /// Writes one row of `vocab_size` logits per chunk with `want_logits`, in chunk order, into
    /// `logits` (resized), from the first `n_rows` rows of the residual stream `s.x`: the rows
    /// [`StepScratch::keep_logit_rows`] kept.
    pub fn logits_of_kept_rows(
        &self,
        n_rows: usize,
        rms_eps: f32,
        s: &mut StepScratch,
        logits: &mut Vec<f32>,
        pool: &ThreadPool,
    ) {
        let hidden = self.output_norm.len();
        let rows = ..n_rows * hidden;
        rms_norm_rows(&s.x[rows], &self.output_norm, rms_eps, &mut s.normed[rows], pool);
        let head = self.output.as_ref().unwrap_or(&self.token_embedding);
        logits.resize(n_rows * head.rows(), 0.0);
        if n_rows > 0 {
            head.matmul(&s.normed[rows], n_rows, logits, pool);
        }
    }
}
