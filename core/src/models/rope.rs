//! Rotary position embeddings: the frequency table of a RoPE base, the per-row cos/sin of one
//! step, and the two pairings ggml rotates with (NORMAL for llama, NEOX for Gemma).

use crate::models::attention::Geometry;
use crate::models::elementwise::{for_row_ranges, rms_norm_heads_of_row};
use crate::models::llama::RopeStyle;
use crate::models::rows::RowInfo;
use crate::threadpool::ThreadPool;

/// `theta^(-2i / head_dim)` for each rotated pair `i`.
pub(crate) fn frequencies(theta: f32, head_dim: usize) -> Vec<f64> {
    (0..head_dim / 2).map(|i| (theta as f64).powf(-2.0 * i as f64 / head_dim as f64)).collect()
}

/// [`frequencies`] with RoPE scaling as GGUF stores it: every frequency divided by the linear
/// scale factor (`rope.scaling.factor`: positions are compressed by it), and pair `i`'s also by
/// `frequency_factors[i]` when the file has them (`rope_freqs.weight`, which llama.cpp's
/// converter computes from Llama 3's `rope_scaling` {factor, low/high_freq_factor,
/// original_max_position_embeddings}, or LongRoPE's `rope_factors_short.weight`; ggml divides
/// the same way). The caller has checked that
/// there is one factor per pair and that every factor and the scale are positive.
pub(crate) fn scaled_frequencies(
    theta: f32,
    head_dim: usize,
    linear_factor: f64,
    frequency_factors: Option<&[f32]>,
) -> Vec<f64> {
    let mut scaled = frequencies(theta, head_dim);
    for (i, frequency) in scaled.iter_mut().enumerate() {
        let factor = frequency_factors.and_then(|f| f.get(i)).map_or(1.0, |&f| f as f64);
        *frequency /= linear_factor * factor;
    }
    scaled
}

/// The rotation of each row's position: `head_dim / 2` values per row.
#[derive(Default)]
pub(crate) struct RopeTable {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Fills the table for `rows` (reusing its allocation). The angle is computed in f64 and
    /// rounded once, so a position's rotation does not depend on the step it is in.
    pub fn fill(&mut self, rows: &[RowInfo], frequencies: &[f64]) {
        self.cos.clear();
        self.sin.clear();
        for row in rows {
            for &frequency in frequencies {
                let angle = row.position as f64 * frequency;
                self.cos.push(angle.cos() as f32);
                self.sin.push(angle.sin() as f32);
            }
        }
    }

    /// The cos and sin of row `row`'s position (`half` values each).
    fn row(&self, row: usize, half: usize) -> (&[f32], &[f32]) {
        (&self.cos[row * half..][..half], &self.sin[row * half..][..half])
    }
}

/// RoPE on every query and key head of each fused `qkv` row, with `style`'s pairing (see
/// [`rotate_row`]).
#[cfg(test)]
pub(crate) fn rotate(qkv: &mut [f32], g: &Geometry, style: RopeStyle, table: &RopeTable) {
    for (r, row) in qkv.chunks_exact_mut(g.qkv_row_len).enumerate() {
        let (cos, sin) = table.row(r, g.head_dim / 2);
        rotate_row(row, g, style, cos, sin);
    }
}

/// RoPE on every query and key head of one fused `[q | k | v]` row whose position has
/// rotation `cos`/`sin`. NORMAL (llama): adjacent pairs `(x[2i], x[2i+1])` rotate by
/// `position · theta^(-2i / head_dim)` (the GGUF converter permuted Wq and Wk so that this
/// pairing matches the original llama model). NEOX (Gemma, Qwen, Phi-3): the pairs
/// `(x[i], x[i + half])`.
fn rotate_row(row: &mut [f32], g: &Geometry, style: RopeStyle, cos: &[f32], sin: &[f32]) {
    for head in row[..g.q_dim() + g.kv_dim()].chunks_exact_mut(g.head_dim) {
        match style {
            RopeStyle::Normal => {
                for ((pair, &cos), &sin) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                    let (a, b) = (pair[0], pair[1]);
                    pair[0] = a * cos - b * sin;
                    pair[1] = a * sin + b * cos;
                }
            }
            RopeStyle::Neox => {
                let (first, second) = head.split_at_mut(g.head_dim / 2);
                for (((a, b), &cos), &sin) in first.iter_mut().zip(second.iter_mut()).zip(cos).zip(sin) {
                    let (x, y) = (*a, *b);
                    *a = x * cos - y * sin;
                    *b = x * sin + y * cos;
                }
            }
        }
    }
}

/// Per-head RMS norms of queries and keys (Gemma 3, Qwen 3), with their epsilon.
pub(crate) struct HeadNorms<'a> {
    pub query: &'a [f32],
    pub key: &'a [f32],
    pub eps: f32,
}

/// What is done to each fused `[q | k | v]` row between the QKV projection and attention, in
/// this order: the bias added (Qwen 2), the per-head norms, RoPE.
pub(crate) struct QkvRowPrep<'a> {
    pub bias: Option<&'a [f32]>,
    pub head_norms: Option<HeadNorms<'a>>,
    pub style: RopeStyle,
    pub rope: &'a RopeTable,
}

impl QkvRowPrep<'_> {
    /// Applies every step to each row of `qkv` in one pass, rows spread over the pool (these
    /// were three passes on the calling thread while the pool waited). Each row's values go
    /// through the same operations in the same order as before, whichever thread takes it.
    pub fn apply(&self, qkv: &mut [f32], g: &Geometry, pool: &ThreadPool) {
        let half = g.head_dim / 2;
        for_row_ranges(qkv.len() / g.qkv_row_len, qkv, g.qkv_row_len, pool, |rows, qkv_rows| {
            for (r, row) in rows.zip(qkv_rows.chunks_exact_mut(g.qkv_row_len)) {
                if let Some(bias) = self.bias {
                    row.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
                }
                if let Some(norms) = &self.head_norms {
                    rms_norm_heads_of_row(row, g, norms.query, norms.key, norms.eps);
                }
                let (cos, sin) = self.rope.row(r, half);
                rotate_row(row, g, self.style, cos, sin);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::elementwise::{add_bias_rows, rms_norm_query_and_key_heads};

    /// The pass spread over the pool equals the separate whole-batch passes (bias, head norms,
    /// RoPE) bit for bit, for both pairings, with rows at varied positions.
    #[test]
    fn the_pooled_row_pass_equals_the_separate_passes() {
        let pool = ThreadPool::new(2).expect("start the thread pool");
        // Gemma 3's shape in small: 4 query heads, 2 KV heads of 8.
        let g = Geometry { n_heads: 4, n_kv_heads: 2, head_dim: 8, qkv_row_len: (4 + 2 * 2) * 8, scale: 1.0 };
        let n_rows = 37;
        let rows: Vec<RowInfo> = (0..n_rows).map(|r| RowInfo { token: 0, position: (r * 7919) % 300 }).collect();
        let mut table = RopeTable::default();
        table.fill(&rows, &frequencies(10_000.0, g.head_dim));
        let qkv: Vec<f32> = (0..n_rows * g.qkv_row_len).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.031).collect();
        let bias: Vec<f32> = (0..g.qkv_row_len).map(|i| (i % 9) as f32 * 0.1 - 0.4).collect();
        let (q_norm, k_norm): (Vec<f32>, Vec<f32>) =
            (0..8).map(|i| (0.5 + i as f32 * 0.1, 1.5 - i as f32 * 0.07)).unzip();
        for style in [RopeStyle::Normal, RopeStyle::Neox] {
            for with_extras in [false, true] {
                let mut separate = qkv.clone();
                if with_extras {
                    add_bias_rows(&mut separate, &bias);
                    rms_norm_query_and_key_heads(&mut separate, &g, &q_norm, &k_norm, 1e-6);
                }
                rotate(&mut separate, &g, style, &table);
                let mut pooled = qkv.clone();
                let prep = QkvRowPrep {
                    bias: with_extras.then_some(&bias[..]),
                    head_norms: with_extras.then(|| HeadNorms { query: &q_norm, key: &k_norm, eps: 1e-6 }),
                    style,
                    rope: &table,
                };
                prep.apply(&mut pooled, &g, &pool);
                let first_difference = separate.iter().zip(&pooled).position(|(a, b)| a.to_bits() != b.to_bits());
                assert_eq!(first_difference, None, "{style:?}, bias and norms: {with_extras}");
                // V is never rotated; something else is.
                assert_ne!(pooled, qkv);
                let v = g.q_dim() + g.kv_dim();
                let unrotated = |b: &[f32]| b.chunks_exact(g.qkv_row_len).map(|r| r[v..].to_vec()).collect::<Vec<_>>();
                if !with_extras {
                    assert_eq!(unrotated(&pooled), unrotated(&qkv));
                }
            }
        }
    }

    #[test]
    fn scaling_divides_each_frequency_by_the_linear_factor_and_its_own_factor() {
        let base = frequencies(10_000.0, 8);
        let scaled = scaled_frequencies(10_000.0, 8, 4.0, Some(&[1.0, 2.0, 8.0, 0.5]));
        let expected: Vec<f64> = base.iter().zip([1.0, 2.0, 8.0, 0.5]).map(|(f, d)| f / (4.0 * d)).collect();
        assert_eq!(scaled, expected);
        assert_eq!(scaled_frequencies(10_000.0, 8, 1.0, None), base);
    }
}
