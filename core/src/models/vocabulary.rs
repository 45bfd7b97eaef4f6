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

    /// Computes the head for the first `n_rows` rows of the residual stream `s.x` (the rows
    /// [`StepScratch::keep_logit_rows`] kept: one per chunk with `want_logits`, in chunk
    /// order) into `rows` (see [`LogitRows`]).
    pub fn logits_of_kept_rows(
        &self,
        n_rows: usize,
        rms_eps: f32,
        s: &mut StepScratch,
        rows: &mut LogitRows,
        pool: &ThreadPool,
    ) {
        let hidden = self.output_norm.len();
        let kept = ..n_rows * hidden;
        rms_norm_rows(&s.x[kept], &self.output_norm, rms_eps, &mut s.normed[kept], pool);
        let head = self.output.as_ref().unwrap_or(&self.token_embedding);
        rows.argmax.clear();
        if !rows.argmax_only.iter().take(n_rows).any(|&a| a) {
            rows.logits.resize(n_rows * head.rows(), 0.0);
            if n_rows > 0 {
                head.matmul(&s.normed[kept], n_rows, &mut rows.logits, pool);
            }
            return;
        }
        // Rows past the flags want logits: pad the flags (the caller's buffer, reused).
        rows.argmax_only.resize(rows.argmax_only.len().max(n_rows), false);
        let flags = &rows.argmax_only[..n_rows];
        head.matmul_argmax_rows(&s.normed[kept], n_rows, flags, &mut rows.logits, &mut rows.argmax, pool);
    }
}

/// What the output head computes for a step's logit rows (one per chunk with `want_logits`,
/// in chunk order), and its results.
///
/// A row whose next token is the plain argmax of its raw logits (see
/// [`crate::sampling::Sampler::picks_raw_argmax`]) needs only that index: the head finds it
/// tile by tile and never writes the row's logits (Gemma 3's vocabulary is 262,144 logits a
/// row). The index is the one [`crate::sampling::argmax`] picks from the row's logits, which
/// are the same bits whether or not they are written.
#[derive(Debug, Default)]
pub struct LogitRows {
    /// Set by the caller: per logit row, whether it wants only its argmax. Rows past the end
    /// want logits (empty: every row does).
    pub argmax_only: Vec<bool>,
    /// The logits of the rows that want them, `vocab_size` per row, packed in row order.
    pub logits: Vec<f32>,
    /// The argmax of each row that wants only that, in row order.
    pub argmax: Vec<u32>,
}

impl LogitRows {
    /// Runs `forward` with every row wanting logits, written into `logits` (whose allocation
    /// is reused): the plain logits contract of the models' `forward`.
    pub fn all_logits<T>(logits: &mut Vec<f32>, forward: impl FnOnce(&mut LogitRows) -> T) -> T {
        let mut rows = LogitRows { logits: std::mem::take(logits), ..LogitRows::default() };
        let result = forward(&mut rows);
        *logits = rows.logits;
        result
    }
}
