//! Element-wise and per-row operations of the BERT encoder.

/// Layer normalisation over the last dimension, with a learned scale and shift.
pub(super) struct LayerNorm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f32,
}

impl LayerNorm {
    /// Normalises every row of `rows` (a whole number of rows of `weight.len()` values) in place.
    pub fn forward_in_place(&self, rows: &mut [f32]) {
        let dim = self.weight.len();
        for row in rows.chunks_exact_mut(dim) {
            // Two passes: the variance of values far from 0 stays accurate in f32.
            let mean = row.iter().sum::<f32>() / dim as f32;
            let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
            let inv_std = 1.0 / (variance + self.eps).sqrt();
            for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                *v = (*v - mean) * inv_std * w + b;
            }
        }
    }
}

/// `values[i] += addend[i]`: the residual connections.
pub(super) fn add_in_place(values: &mut [f32], addend: &[f32]) {
    assert_eq!(values.len(), addend.len(), "residual shapes differ");
    for (v, a) in values.iter_mut().zip(addend) {
        *v += a;
    }
}

/// The exact GELU, `x · Φ(x)`, that BERT's `hidden_act: gelu` means (not the tanh approximation).
pub(super) fn gelu_in_place(values: &mut [f32]) {
    for v in values {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// Softmax of one row, in place.
pub(super) fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv_sum = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv_sum;
    }
}

/// Scales `values` to unit Euclidean length (left as is if all zero).
pub(super) fn l2_normalize(values: &mut [f32]) {
    let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        for v in values {
            *v /= norm;
        }
    }
}

/// The error function, by Abramowitz & Stegun 7.1.26. The absolute error is below 1.5e-7,
/// under the f32 spacing near erf's range ends, and the standard library has no stable `erf`.
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152_1, 1.061_405_4];
    let t = 1.0 / (1.0 + P * x.abs());
    let polynomial = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let magnitude = 1.0 - polynomial * (-x * x).exp();
    magnitude.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_tabulated_values() {
        let table: [(f32, f64); 6] = [
            (0.0, 0.0),
            (0.1, 0.112_462_916),
            (0.5, 0.520_499_878),
            (1.0, 0.842_700_793),
            (2.0, 0.995_322_265),
            (3.5, 0.999_999_257),
        ];
        for (x, expected) in table {
            assert!((f64::from(erf(x)) - expected).abs() < 3e-7, "erf({x}) = {} vs {expected}", erf(x));
            assert!((f64::from(erf(-x)) + expected).abs() < 3e-7, "erf(-{x})");
        }
    }

    #[test]
    fn gelu_matches_its_definition() {
        let mut values = [-3.0f32, -1.0, 0.0, 0.5, 2.0];
        gelu_in_place(&mut values);
        // x · Φ(x) computed in float64.
        let expected = [-0.004_049_694, -0.158_655_25, 0.0, 0.345_731_23, 1.954_499_7];
        for (got, want) in values.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn layer_norm_gives_zero_mean_unit_variance_then_scales() {
        let norm = LayerNorm { weight: vec![2.0; 4], bias: vec![1.0; 4], eps: 0.0 };
        let mut rows = [1.0f32, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 14.0];
        norm.forward_in_place(&mut rows);
        let first = [-1.341_640_8, -0.447_213_6, 0.447_213_6, 1.341_640_8].map(|z| 2.0 * z + 1.0);
        let second = [-0.577_350_3, -0.577_350_3, -0.577_350_3, 1.732_050_8].map(|z| 2.0 * z + 1.0);
        for (got, want) in rows.iter().zip(first.iter().chain(&second)) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut row = [1.0f32, 3.0, 2.0, 1000.0];
        softmax_in_place(&mut row);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((row[3] - 1.0).abs() < 1e-6);
        let mut small = [0.0f32, 2.0_f32.ln()];
        softmax_in_place(&mut small);
        assert!((small[0] - 1.0 / 3.0).abs() < 1e-6 && (small[1] - 2.0 / 3.0).abs() < 1e-6);
    }
}
