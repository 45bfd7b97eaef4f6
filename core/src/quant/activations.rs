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
    /// `Σ q[..16]`, exact: the first 16-value half's sum, which the Q6_K kernels need for
    /// every weight row; taken once here rather than once per row group of every matmul.
    pub low_sum: i32,
    /// `-16 Σ q[i]`, exact: Q5_0's bias taken off its block dots (`regroup`). Kept here so the
    /// kernels broadcast it straight from memory: computed in a general register and broadcast
    /// from there, it cost the vector pipes about what Q5_0's `Plain` epilogue saves them.
    pub minus_16_sum: i32,
    /// `-128 Σ q[i]`, exact: the Q8_0 kernels' start (weights made unsigned by adding 128),
    /// broadcast from memory for the same reason as `minus_16_sum`.
    pub minus_128_sum: i32,
    /// `-32 Σ q[..16]` and `-32 Σ q[16..]`, exact: Q6_K's two 16-value halves' starts (its
    /// values are stored plus 32), likewise broadcast from memory.
    pub minus_32_low_sum: i32,
    pub minus_32_high_sum: i32,
    pub q: [i8; BLOCK],
}

impl Q8Block {
    /// Sets the scale and every field derived from the exact sums of the values (`sum` over
    /// all 32, `low_sum` over the first 16): the one place that defines them, so the portable
    /// and SIMD quantizers cannot disagree on a field. |Σ| <= 32 * 127, so no product overflows.
    pub(super) fn set_scale_and_sums(&mut self, d: f32, sum: i32, low_sum: i32) {
        self.d = d;
        self.s = d * sum as f32;
        self.sum = sum;
        self.low_sum = low_sum;
        self.minus_16_sum = -16 * sum;
        self.minus_128_sum = -128 * sum;
        self.minus_32_low_sum = -32 * low_sum;
        self.minus_32_high_sum = -32 * (sum - low_sum);
    }

    /// Every field of the two blocks equal, floats by their bits (for tests: `Q8Block` has no
    /// `PartialEq`). Destructured without `..`, so a field added to `Q8Block` does not compile
    /// here until it is compared too.
    #[cfg(test)]
    pub(crate) fn same_bits(&self, other: &Q8Block) -> bool {
        let Q8Block { d, s, sum, low_sum, minus_16_sum, minus_128_sum, minus_32_low_sum, minus_32_high_sum, q } = *self;
        let b = other;
        d.to_bits() == b.d.to_bits()
            && s.to_bits() == b.s.to_bits()
            && (sum, low_sum, minus_16_sum, minus_128_sum) == (b.sum, b.low_sum, b.minus_16_sum, b.minus_128_sum)
            && (minus_32_low_sum, minus_32_high_sum) == (b.minus_32_low_sum, b.minus_32_high_sum)
            && q == b.q
    }
}

/// The scale `d` of a block whose largest magnitude is `amax`, and the inverse the values are
/// multiplied by; every path (portable and SIMD) takes both from here.
///
/// A block whose inverse is not finite (all zeros, or `0 < amax < ~3.7e-37`, where `d` is
/// below `1 / f32::MAX`) quantizes to zeros with `d = 0`: its values are far below what the
/// f32 dot products resolve, and an infinite inverse would make them ±inf and NaN, which the
/// portable and SIMD float-to-int conversions turn into different (and wrong) integers.
pub(super) fn block_scale(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    let inverse = 1.0 / d;
    if inverse.is_finite() {
        (d, inverse)
    } else {
        (0.0, 0.0)
    }
}

/// Quantizes one row (`x.len() == out.len() * 32`) block by block, portably; the SIMD paths
/// give the same bits (see `quantize_row` in the parent module, which picks one).
///
/// Each block uses its own scale `max|x| / 127` and rounds to nearest, ties to even, so a
/// row's result depends only on that row: the root of batch invariance.
pub fn quantize_row_portable(x: &[f32], out: &mut [Q8Block]) {
    for (values, block) in x.chunks_exact(BLOCK).zip(out.iter_mut()) {
        let amax = values.iter().fold(0f32, |acc, v| acc.max(v.abs()));
        let (d, inverse) = block_scale(amax);
        let mut sum = 0i32;
        for (q, &v) in block.q.iter_mut().zip(values) {
            // |v * inverse| <= 127 up to rounding, and rounding cannot leave [-127, 127]:
            // the kernels rely on never seeing -128.
            *q = (v * inverse).round_ties_even() as i8;
            sum += *q as i32;
        }
        let low_sum = block.q[..BLOCK / 2].iter().map(|&q| q as i32).sum();
        block.set_scale_and_sums(d, sum, low_sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The dispatcher (AVX2 where available) is checked against the portable statement here.
    use crate::quant::quantize_row;

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
            let low_sum = block.q[..16].iter().map(|&q| q as i32).sum::<i32>();
            assert_eq!(block.low_sum, low_sum);
            assert_eq!(block.minus_16_sum, -16 * sum);
            assert_eq!(block.minus_128_sum, -128 * sum);
            assert_eq!((block.minus_32_low_sum, block.minus_32_high_sum), (-32 * low_sum, -32 * (sum - low_sum)));
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
            assert!(a.same_bits(b), "block {i}");
        }
    }

    #[test]
    fn zero_block_quantizes_to_zero() {
        let mut blocks = vec![Q8Block::default(); 1];
        quantize_row(&[0.0; 32], &mut blocks);
        assert_eq!((blocks[0].d, blocks[0].s), (0.0, 0.0));
        assert!(blocks[0].q.iter().all(|&q| q == 0));
    }

    /// Blocks whose largest magnitude runs from ordinary sizes down through the point where
    /// `1 / d` overflows (max|x| ~ 3.7e-37) into the subnormals.
    fn tiny_blocks() -> Vec<f32> {
        let maxima = [
            1.0f32,
            1e-30,
            1e-36,
            4e-37,
            3.8e-37,
            3.7e-37,
            3.6e-37,
            1e-37,
            f32::MIN_POSITIVE,
            1e-39,
            1e-44,
            f32::from_bits(1),
        ];
        let mut x = Vec::new();
        for amax in maxima {
            // Mixed signs and magnitudes, the maximum positive in one block and negative in
            // the next; then a block holding a single non-zero value.
            let shape = |i: usize| ((i * 13 % 32) as f32 - 15.0) / 16.0;
            x.extend((0..BLOCK).map(|i| amax * shape(i)).map(|v| v.clamp(-amax, amax)));
            let first = x.len() - BLOCK;
            x[first] = amax;
            x.extend((0..BLOCK).map(|i| -amax * shape(i)).map(|v| v.clamp(-amax, amax)));
            let last = x.len() - 1;
            x[last] = -amax;
            x.extend((0..BLOCK).map(|i| if i == 7 { amax } else { 0.0 }));
        }
        x
    }

    #[test]
    fn tiny_and_subnormal_blocks_quantize_in_range_and_the_same_on_every_path() {
        let x = tiny_blocks();
        let n = x.len() / BLOCK;
        let (mut fast, mut portable) = (vec![Q8Block::default(); n], vec![Q8Block::default(); n]);
        quantize_row(&x, &mut fast);
        quantize_row_portable(&x, &mut portable);
        for (i, (values, block)) in x.chunks_exact(BLOCK).zip(&portable).enumerate() {
            let amax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert!(block.q.iter().all(|&q| (-127..=127).contains(&q)), "block {i} (max {amax:e}): {:?}", block.q);
            assert!(block.d.is_finite() && block.s.is_finite(), "block {i} (max {amax:e}): {block:?}");
            let flushed = !(1.0 / (amax / 127.0)).is_finite();
            if flushed {
                assert_eq!((block.d, block.sum), (0.0, 0), "block {i} (max {amax:e}) is flushed to zero");
            } else {
                assert!(block.q.iter().any(|&q| q.abs() == 127), "block {i} (max {amax:e}) keeps its scale");
            }
            // Every value within half a step (plus rounding of a subnormal product), or, in a
            // flushed block, within its own negligible size.
            let bound = if flushed { amax } else { block.d * 0.500_001 + f32::from_bits(1) };
            for (&v, &q) in values.iter().zip(&block.q) {
                let error = (v - block.d * q as f32).abs();
                assert!(error <= bound, "block {i}: {v:e} -> {q} * {:e}", block.d);
            }
        }
        for (i, (a, b)) in fast.iter().zip(&portable).enumerate() {
            assert!(a.same_bits(b), "block {i}: SIMD {a:?} vs portable {b:?}");
        }
    }

    /// Blocks holding NaN and infinities (a diverged model): garbage either way, but the same
    /// garbage on every path, and never a quantized value outside [-127, 127].
    fn non_finite_blocks() -> Vec<f32> {
        let ordinary = |i: usize| (i as f32 - 15.5) * 0.25;
        let mut x = Vec::new();
        for (lane, special) in
            [(0, f32::NAN), (9, f32::NAN), (31, f32::NAN), (3, f32::INFINITY), (30, f32::NEG_INFINITY)]
        {
            let start = x.len();
            x.extend((0..BLOCK).map(ordinary));
            x[start + lane] = special;
        }
        x.extend([f32::NAN; BLOCK]);
        x.extend((0..BLOCK).map(|i| if i % 2 == 0 { f32::NAN } else { f32::INFINITY }));
        x.extend((0..BLOCK).map(|i| if i == 5 { f32::NAN } else { 1e-40 }));
        x
    }

    #[test]
    fn non_finite_blocks_never_quantize_outside_the_kernel_range() {
        let x = non_finite_blocks();
        let mut blocks = vec![Q8Block::default(); x.len() / BLOCK];
        quantize_row(&x, &mut blocks);
        for (i, block) in blocks.iter().enumerate() {
            assert!(block.q.iter().all(|&q| q != i8::MIN), "block {i}: {:?}", block.q);
        }
    }

    /// The SIMD quantizer against the portable one directly, so the comparison does not
    /// depend on what `quantize_row` dispatches to. AVX2 is the only SIMD activation
    /// quantizer (the VNNI, AVX-512 and AMX kernels consume its blocks).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_quantizer_matches_the_portable_one_bit_for_bit() {
        if !super::super::avx2::is_available() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        let mut x = tiny_blocks();
        x.extend((0..4096).map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.0123));
        x.extend(non_finite_blocks());
        let mut portable = vec![Q8Block::default(); x.len() / BLOCK];
        quantize_row_portable(&x, &mut portable);
        for (i, (values, expected)) in x.chunks_exact(BLOCK).zip(&portable).enumerate() {
            let mut block = Q8Block::default();
            // SAFETY: AVX2 is available (checked above); `values` holds exactly 32 floats.
            unsafe { super::super::avx2::quantize_block(values.try_into().expect("32 values"), &mut block) };
            assert!(block.same_bits(expected), "block {i}: AVX2 {block:?} vs portable {expected:?}");
        }
    }
}
