//! Rotary position embeddings: the frequency table of a RoPE base, the per-row cos/sin of one
//! step, and the two pairings ggml rotates with (NORMAL for llama, NEOX for Gemma).

use crate::models::attention::Geometry;
use crate::models::rows::RowInfo;

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

    /// Each query and key head of each fused `qkv` row, with that row's cos and sin.
    fn heads_with_rotation<'a>(
        &'a self,
        qkv: &'a mut [f32],
        g: &Geometry,
    ) -> impl Iterator<Item = (&'a mut [f32], &'a [f32], &'a [f32])> + 'a {
        let half = g.head_dim / 2;
        let (rotated, head_dim) = (g.q_dim() + g.kv_dim(), g.head_dim);
        qkv.chunks_exact_mut(g.qkv_row_len).zip(self.cos.chunks_exact(half)).zip(self.sin.chunks_exact(half)).flat_map(
            move |((row, cos), sin)| row[..rotated].chunks_exact_mut(head_dim).map(move |head| (head, cos, sin)),
        )
    }
}

/// RoPE in ggml's NORMAL mode on every query and key head: adjacent pairs `(x[2i], x[2i+1])`
/// rotate by `position · theta^(-2i / head_dim)`. (The GGUF converter permuted Wq and Wk so
/// that this pairing matches the original llama model.)
pub(crate) fn rotate_normal(qkv: &mut [f32], g: &Geometry, table: &RopeTable) {
    for (head, cos, sin) in table.heads_with_rotation(qkv, g) {
        for ((pair, &cos), &sin) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * cos - b * sin;
            pair[1] = a * sin + b * cos;
        }
    }
}

/// RoPE in ggml's NEOX mode on every query and key head: the pairs `(x[i], x[i + half])`
/// rotate by `position · theta^(-2i / head_dim)`.
pub(crate) fn rotate_neox(qkv: &mut [f32], g: &Geometry, table: &RopeTable) {
    let half = g.head_dim / 2;
    for (head, cos, sin) in table.heads_with_rotation(qkv, g) {
        let (first, second) = head.split_at_mut(half);
        for (((a, b), &cos), &sin) in first.iter_mut().zip(second.iter_mut()).zip(cos).zip(sin) {
            let (x, y) = (*a, *b);
            *a = x * cos - y * sin;
            *b = x * sin + y * cos;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_divides_each_frequency_by_the_linear_factor_and_its_own_factor() {
        let base = frequencies(10_000.0, 8);
        let scaled = scaled_frequencies(10_000.0, 8, 4.0, Some(&[1.0, 2.0, 8.0, 0.5]));
        let expected: Vec<f64> = base.iter().zip([1.0, 2.0, 8.0, 0.5]).map(|(f, d)| f / (4.0 * d)).collect();
        assert_eq!(scaled, expected);
        assert_eq!(scaled_frequencies(10_000.0, 8, 1.0, None), base);
    }
}
