//! Projections stacked along the output rows (Wq|Wk|Wv, Wgate|Wup): one fused matmul when the
//! parts share a tensor type, otherwise one matmul per part with the outputs laid side by side
//! in each row. Quantized files mix types inside a layer (Gemma 3 270M Q4_K_M stores some
//! layers' `attn_v` as Q8_0 beside Q5_0 `attn_q`/`attn_k`): refusing them would refuse the files
//! people download. Either way each output row depends only on its input row, so batch
//! invariance holds.

use std::sync::Mutex;

use crate::quant::{Q8Block, QMatrix};
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
    /// Stacks `parts` (same `cols`, which the caller has checked). Parts that cannot all be
    /// fused are fused in adjacent runs that can (Gemma 3's Q5_0 `attn_q` and `attn_k` beside
    /// a Q8_0 `attn_v` give two parts, not three): fewer matmuls per step, same bits.
    pub fn new(parts: Vec<QMatrix>) -> Self {
        if let Some(fused) = QMatrix::concat_rows(&parts) {
            return Self::Fused(fused);
        }
        let mut runs: Vec<QMatrix> = Vec::with_capacity(parts.len());
        for part in parts {
            let fused = runs.last().and_then(|last| QMatrix::concat_rows(&[last.clone(), part.clone()]));
            match fused {
                Some(fused) => *runs.last_mut().expect("a last run") = fused,
                None => runs.push(part),
            }
        }
        Self::Parts { parts: runs, buffer: Mutex::new(Vec::new()) }
    }

    /// Output values per row: the parts' rows together.
    pub fn rows(&self) -> usize {
        match self {
            Self::Fused(m) => m.rows(),
            Self::Parts { parts, .. } => parts.iter().map(QMatrix::rows).sum(),
        }
    }

    /// `out` row `r` = `[part_0 · x_r | part_1 · x_r | ...]` for the `m` rows of `x`.
    #[cfg(test)]
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32], pool: &ThreadPool) {
        self.matmul_prequantized(x, None, m, out, pool)
    }

    /// [`Self::matmul`] with `x`'s rows already quantized when `quantized` is given (see
    /// [`QMatrix::matmul_prequantized`]): the same bits.
    pub fn matmul_prequantized(
        &self,
        x: &[f32],
        quantized: Option<&[Q8Block]>,
        m: usize,
        out: &mut [f32],
        pool: &ThreadPool,
    ) {
        match self {
            Self::Fused(fused) => match quantized {
                Some(quantized) => fused.matmul_prequantized(x, quantized, m, out, pool),
                None => fused.matmul(x, m, out, pool),
            },
            Self::Parts { parts, buffer } => {
                let width = self.rows();
                let mut buffer = buffer.lock().unwrap_or_else(|e| e.into_inner());
                // The parts' outputs arrive in order, each beside the previous one.
                let mut first_column = 0;
                QMatrix::matmul_each(parts, x, quantized, m, &mut buffer, pool, |i, part_out| {
                    let rows = parts[i].rows();
                    for (out_row, part_row) in out.chunks_exact_mut(width).zip(part_out.chunks_exact(rows)) {
                        out_row[first_column..first_column + rows].copy_from_slice(part_row);
                    }
                    first_column += rows;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgmlType;

    const COLS: usize = 64;

    /// A `rows` × 64 matrix of type `ty` (Q5_0 or Q8_0) with pseudo-random values and sane
    /// f16 scales.
    fn matrix(ty: GgmlType, rows: usize, seed: u64) -> QMatrix {
        let (block_bytes, blocks) = (ty.block_layout().1, rows * COLS / 32);
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut bytes: Vec<u8> = (0..blocks * block_bytes)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        for block in bytes.chunks_exact_mut(block_bytes) {
            block[..2].copy_from_slice(&[0x00, 0x20]);
        }
        QMatrix::from_ggml_bytes(ty, rows, COLS, &bytes).expect("a matrix")
    }

    #[test]
    fn mixed_parts_fuse_adjacent_runs_and_lay_outputs_side_by_side() {
        let pool = ThreadPool::new(2).expect("start the thread pool");
        // Gemma 3's shape: Q5_0 Wq and Wk, a Q8_0 Wv; then a Q5_0 after the Q8_0 again.
        let parts = vec![
            matrix(GgmlType::Q5_0, 24, 1),
            matrix(GgmlType::Q5_0, 8, 2),
            matrix(GgmlType::Q8_0, 8, 3),
            matrix(GgmlType::Q5_0, 16, 4),
        ];
        let stacked = StackedMatrix::new(parts.clone());
        match &stacked {
            StackedMatrix::Parts { parts, .. } => {
                assert_eq!(parts.iter().map(QMatrix::rows).collect::<Vec<_>>(), [32, 8, 16], "Wq|Wk fused")
            }
            StackedMatrix::Fused(_) => panic!("formats differ: cannot fuse them all"),
        }
        let width = stacked.rows();
        for m in [1, 5, 40] {
            let x: Vec<f32> = (0..m * COLS).map(|i| ((i * 7919 % 211) as f32 - 105.0) * 0.013).collect();
            let mut out = vec![f32::NAN; m * width];
            stacked.matmul(&x, m, &mut out, &pool);
            let mut first_column = 0;
            for part in &parts {
                let mut alone = vec![0f32; m * part.rows()];
                part.matmul(&x, m, &mut alone, &pool);
                for (out_row, alone_row) in out.chunks_exact(width).zip(alone.chunks_exact(part.rows())) {
                    let got = &out_row[first_column..first_column + part.rows()];
                    assert_eq!(got, alone_row, "{m} rows, columns from {first_column}");
                }
                first_column += part.rows();
            }
        }
    }
}
