//! The end of a decoder step: final RMS norm and output head, over only the rows that want
//! logits (the last row of each chunk with `want_logits`).

use crate::models::elementwise::rms_norm_rows;
use crate::models::step::StepScratch;
use crate::models::SeqChunk;
use crate::quant::QMatrix;
use crate::threadpool::ThreadPool;

/// The final norm weights and the output matrix (the token embedding when weights are tied).
pub(crate) struct OutputHead<'a> {
    pub norm: &'a [f32],
    pub rms_eps: f32,
    pub matrix: &'a QMatrix,
}

impl OutputHead<'_> {
    /// Writes one row of `vocab_size` logits per chunk with `want_logits`, in chunk order, into
    /// `logits` (resized), from the residual stream `s.x`.
    pub fn wanted_logits(
        &self,
        chunks: &[SeqChunk<'_>],
        s: &mut StepScratch,
        logits: &mut Vec<f32>,
        pool: &ThreadPool,
    ) {
        let hidden = self.norm.len();
        s.logit_inputs.clear();
        let mut first_row = 0;
        for chunk in chunks {
            first_row += chunk.tokens.len();
            if chunk.want_logits {
                s.logit_inputs.extend_from_slice(&s.x[(first_row - 1) * hidden..][..hidden]);
            }
        }
        let n_logits = s.logit_inputs.len() / hidden;
        s.normed.resize(n_logits * hidden, 0.0);
        rms_norm_rows(&s.logit_inputs, self.norm, self.rms_eps, &mut s.normed, pool);
        logits.resize(n_logits * self.matrix.rows(), 0.0);
        if n_logits > 0 {
            self.matrix.matmul(&s.normed, n_logits, logits, pool);
        }
    }
}
