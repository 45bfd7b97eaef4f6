//! Activation rows quantized to 8 bits per 32-element block, the left operand of the integer
//! kernels (llama.cpp's Q8_1 idea: symmetric 8-bit values plus the block sum).

use super::blocks::BLOCK;

/// 32 activations quantized together: value `i` is about `d * q[i]`.
///
/// `s = d * Σ q[i]` serves weights with an offset: `Σ (d_w q_w[i] + m) · d q[i]` equals
/// `d_w d Σ q_w[i] q[i] + m s`, so the offset costs one multiply per block, not 32.
#[derive(Debug, Clone, Copy, Default)]
pub struct Q8Block {
    pub d: f32,
    pub s: f32,
    /// `Σ q[i]`, exact: lets a kernel that needs unsigned weights add 128 to them and take
    /// `128 Σ q[i]` back off in integers (the VNNI kernel's Q8_0 path).
    pub sum: i32,
    pub q: [i8; BLOCK],
}

/// Quantizes one row (`x.len() == out.len() * 32`) block by block.
///
/// Each block uses its own scale `max|x| / 127` and rounds to nearest, ties to even, so a
/// row's result depends only on that row: the root of batch invariance. The AVX2 version
/// gives the same bits (same scale, same rounding, exact integer sum).
pub fn quantize_row(x: &[f32], out: &mut [Q8Block]) {
    debug_assert_eq!(x.len(), out.len() * BLOCK);
    #[cfg(target_arch = "x86_64")]
    if super::avx2::is_available() {
        for (values, block) in x.chunks_exact(BLOCK).zip(out.iter_mut()) {
            // SAFETY: AVX2 is available (checked above); `values` holds exactly 32 floats.
            unsafe { super::avx2::quantize_block(values.try_into().expect("32 values"), block) };
        }
        return;
    }
    quantize_row_portable(x, out);
}

/// The portable statement of [`quantize_row`].
pub fn quantize_row_portable(x: &[f32], out: &mut [Q8Block]) {
    for (values, block) in x.chunks_exact(BLOCK).zip(out.iter_mut()) {
        let amax = values.iter().fold(0f32, |acc, v| acc.max(v.abs()));
        let d = amax / 127.0;
        let inverse = if d == 0.0 { 0.0 } else { 1.0 / d };
        let mut sum = 0i32;
        for (q, &v) in block.q.iter_mut().zip(values) {
            // |v * inverse| <= 127 up to rounding, and rounding cannot leave [-127, 127]:
            // the kernels rely on never seeing -128.
            *q = (v * inverse).round_ties_even() as i8;
            sum += *q as i32;
        }
        block.d = d;
        block.s = d * sum as f32;
        block.sum = sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_error_is_at_most_half_a_step() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.173).collect();
        let mut blocks = vec![Q8Block::default(); 2];
        quantize_row(&x, &mut blocks);
        for (values, block) in x.chunks_exact(BLOCK).zip(&blocks) {
            let amax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert!(block.q.iter().any(|&q| q.abs() == 127), "the largest value maps to ±127");
            for (&v, &q) in values.iter().zip(&block.q) {
                assert!((v - block.d * q as f32).abs() <= block.d * 0.5 + amax * 1e-6);
            }
            let sum: i32 = block.q.iter().map(|&q| q as i32).sum();
            assert_eq!(block.s, block.d * sum as f32);
            assert_eq!(block.sum, sum);
        }
    }

    #[test]
    fn simd_and_portable_quantizers_give_the_same_bits() {
        // Ties (x.5 steps), outliers, zeros, negative zero and tiny values.
        let mut x: Vec<f32> = (0..4096).map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.0123).collect();
        x[..32].iter_mut().enumerate().for_each(|(i, v)| *v = i as f32 - 15.5);
        x[32..64].fill(0.0);
        x[64] = -0.0;
        x[100] = 1e-30;
        x[200] = 3.0e4;
        let (mut fast, mut portable) = (vec![Q8Block::default(); 128], vec![Q8Block::default(); 128]);
        quantize_row(&x, &mut fast);
        quantize_row_portable(&x, &mut portable);
        for (i, (a, b)) in fast.iter().zip(&portable).enumerate() {
            assert!(
                a.q == b.q && a.sum == b.sum && a.d.to_bits() == b.d.to_bits() && a.s.to_bits() == b.s.to_bits(),
                "block {i}"
            );
        }
    }

    #[test]
    fn zero_block_quantizes_to_zero() {
        let mut blocks = vec![Q8Block::default(); 1];
        quantize_row(&[0.0; 32], &mut blocks);
        assert_eq!((blocks[0].d, blocks[0].s), (0.0, 0.0));
        assert!(blocks[0].q.iter().all(|&q| q == 0));
    }
}
