//! Projections stacked along the output rows (Wq|Wk|Wv, Wgate|Wup): one fused matmul when the
//! parts share a tensor type, otherwise one matmul per part with the outputs laid side by side
//! in each row. Quantized files mix types inside a layer (Gemma 3 270M Q4_K_M stores some
//! layers' `attn_v` as Q8_0 beside Q5_0 `attn_q`/`attn_k`): refusing them would refuse the files
//! people download. Either way each output row depends only on its input row, so batch
//! invariance holds.

use std::sync::Mutex;

use crate::quant::QMatrix;
use crate::threadpool::ThreadPool;

pub(crate) enum StackedMatrix {
    Fused(QMatrix),
    Parts {
        parts: Vec<QMatrix>,
        /// One part's output for the step, reused (grow-only) so warm steps do not allocate.
        buffer: Mutex<Vec<f32>>,
    },
}

impl StackedMatrix {
    /// Stacks `parts` (same `cols`, which the caller has checked).
    pub fn new(parts: Vec<QMatrix>) -> Self {
        match QMatrix::concat_rows(&parts) {
            Some(fused) => Self::Fused(fused),
            None => Self::Parts { parts, buffer: Mutex::new(Vec::new()) },
        }
    }

    /// Output values per row: the parts' rows together.
    pub fn rows(&self) -> usize {
        match self {
            Self::Fused(m) => m.rows(),
            Self::Parts { parts, .. } => parts.iter().map(QMatrix::rows).sum(),
        }
    }

    /// `out` row `r` = `[part_0 · x_r | part_1 · x_r | ...]` for the `m` rows of `x`.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32], pool: &ThreadPool) {
        match self {
            Self::Fused(fused) => fused.matmul(x, m, out, pool),
            Self::Parts { parts, buffer } => {
                let width = self.rows();
                let mut buffer = buffer.lock().unwrap_or_else(|e| e.into_inner());
                let mut first_column = 0;
                for part in parts {
                    let rows = part.rows();
                    if buffer.len() < m * rows {
                        buffer.resize(m * rows, 0.0);
                    }
                    let part_out = &mut buffer[..m * rows];
                    part.matmul(x, m, part_out, pool);
                    for (out_row, part_row) in out.chunks_exact_mut(width).zip(part_out.chunks_exact(rows)) {
                        out_row[first_column..first_column + rows].copy_from_slice(part_row);
                    }
                    first_column += rows;
                }
            }
        }
    }
}
