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

/// The AVX-512 quantizer: two blocks (four ZMM registers) at a time, so the reductions of
/// their maxima and sums share shuffles, and the rounding, the conversion and the narrowing to
/// bytes each take one instruction per 16 values (`vcvtps2dq` with ties-to-even embedded,
/// `vpmovsdb`) where AVX2 takes three per 8. The scale comes from [`block_scale`] and every
/// derived field from [`Q8Block::set_scale_and_sums`], as on the other paths: the same bits.
#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    use super::{block_scale, Q8Block, BLOCK};

    /// Whether this CPU can run [`quantize_row`].
    pub fn is_available() -> bool {
        crate::cpu::has_avx512f_f16c()
    }

    /// Quantizes one row (`x.len() == out.len() * 32`) exactly as
    /// [`super::quantize_row_portable`] does.
    ///
    /// # Safety
    /// The CPU must support AVX-512F ([`is_available`]).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn quantize_row(x: &[f32], out: &mut [Q8Block]) {
        assert_eq!(x.len(), out.len() * BLOCK, "a row of whole blocks");
        let mut pairs = out.chunks_exact_mut(2);
        for (i, pair) in pairs.by_ref().enumerate() {
            let [a, b] = pair else { unreachable!("chunks of two") };
            // `x` holds the pair's 64 values (asserted above).
            let first = x.as_ptr().add(2 * i * BLOCK);
            quantize_pair(first, first.add(BLOCK), a, b);
        }
        if let [last] = pairs.into_remainder() {
            // An odd last block: quantized as both halves of a pair (the same bits as alone,
            // since nothing crosses between a pair's blocks), the second copy dropped.
            let first = x.as_ptr().add(x.len() - BLOCK);
            let mut twin = Q8Block::default();
            quantize_pair(first, first, last, &mut twin);
        }
    }

    /// Quantizes the 32 values at `a` into `out_a` and the 32 at `b` into `out_b`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    unsafe fn quantize_pair(a: *const f32, b: *const f32, out_a: &mut Q8Block, out_b: &mut Q8Block) {
        let v = [_mm512_loadu_ps(a), _mm512_loadu_ps(a.add(16)), _mm512_loadu_ps(b), _mm512_loadu_ps(b.add(16))];
        // NaN values are skipped, as `f32::max` skips them in the portable fold: `max_ps`
        // returns its second operand when either is NaN, so the running maximum (never NaN,
        // started at 0) goes second.
        let fold = |low, high| {
            let max = _mm512_max_ps(_mm512_abs_ps(low), _mm512_setzero_ps());
            _mm512_max_ps(_mm512_abs_ps(high), max)
        };
        let (max_a, max_b) = (fold(v[0], v[1]), fold(v[2], v[3]));
        // Both blocks' maxima in one tree (NaN-free now, so order does not matter: the maximum
        // of a set is exact): 128-bit lanes [a0 a1 b0 b1] ∨ [a2 a3 b2 b3], then the two lanes
        // of each block, then within lanes. Lane 0 ends with a's maximum, lane 8 with b's.
        let max = _mm512_max_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(max_a, max_b),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(max_a, max_b),
        );
        let max = _mm512_max_ps(max, _mm512_shuffle_f32x4::<0b10_11_00_01>(max, max));
        let max = _mm512_max_ps(max, _mm512_permute_ps::<0b01_00_11_10>(max));
        let max = _mm512_max_ps(max, _mm512_permute_ps::<0b10_11_00_01>(max));
        let amax = (_mm512_cvtss_f32(max), _mm_cvtss_f32(_mm512_extractf32x4_ps::<2>(max)));
        let ((d_a, inverse_a), (d_b, inverse_b)) = (block_scale(amax.0), block_scale(amax.1));
        let round = |x, inverse| {
            let scaled = _mm512_mul_ps(x, _mm512_set1_ps(inverse));
            // A NaN (a NaN input, or ±inf × 0 in a block whose scale is infinite) becomes 0,
            // as the portable `as i8` makes it; the conversion would give i32::MIN (→ -128).
            let ordered = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(scaled, scaled);
            _mm512_maskz_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(ordered, scaled)
        };
        let q = [round(v[0], inverse_a), round(v[1], inverse_a), round(v[2], inverse_b), round(v[3], inverse_b)];
        // The four 16-value halves' sums in one tree: [a_low a_high] and [b_low b_high] folded
        // to 128-bit lanes, then [a_low a_high b_low b_high], then within lanes (exact: |q| <= 127).
        let halves = |low, high| {
            _mm512_add_epi32(
                _mm512_shuffle_i32x4::<0b01_00_01_00>(low, high),
                _mm512_shuffle_i32x4::<0b11_10_11_10>(low, high),
            )
        };
        let (sums_a, sums_b) = (halves(q[0], q[1]), halves(q[2], q[3]));
        let sums = _mm512_add_epi32(
            _mm512_shuffle_i32x4::<0b10_00_10_00>(sums_a, sums_b),
            _mm512_shuffle_i32x4::<0b11_01_11_01>(sums_a, sums_b),
        );
        let sums = _mm512_add_epi32(sums, _mm512_shuffle_epi32::<0b01_00_11_10>(sums));
        let sums = _mm512_add_epi32(sums, _mm512_shuffle_epi32::<0b10_11_00_01>(sums));
        let mut lanes = [0i32; 16];
        _mm512_storeu_si512(lanes.as_mut_ptr().cast(), sums);
        // Each 16 i32 narrow to 16 i8 with signed saturation, in order (never reached: |q| <= 127).
        for (out, q) in [(&mut *out_a, &q[..2]), (&mut *out_b, &q[2..])] {
            let bytes = out.q.as_mut_ptr() as *mut __m128i;
            _mm_storeu_si128(bytes, _mm512_cvtsepi32_epi8(q[0]));
            _mm_storeu_si128(bytes.add(1), _mm512_cvtsepi32_epi8(q[1]));
        }
        out_a.set_scale_and_sums(d_a, lanes[0] + lanes[4], lanes[0]);
        out_b.set_scale_and_sums(d_b, lanes[8] + lanes[12], lanes[8]);
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

    /// Rows of every awkward kind, odd and even numbers of blocks: ties, zeros, negative zero,
    /// all-equal blocks, ±f32::MAX, the tiny and subnormal blocks, NaN and infinities, and
    /// pseudo-random values over many magnitudes.
    fn awkward_rows() -> Vec<Vec<f32>> {
        let mut state = 0x2545_f491u32;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            // A sign, a magnitude 2^-20 .. 2^20 and a mantissa, from the one draw.
            let magnitude = (2f32).powi((state % 41) as i32 - 20);
            let mantissa = 1.0 + (state >> 8) as f32 / (1u32 << 24) as f32;
            if state & 0x80 != 0 { -magnitude * mantissa } else { magnitude * mantissa }
        };
        let mut special = Vec::new();
        special.extend((0..BLOCK).map(|i| i as f32 - 15.5)); // ties
        special.extend([0.0; BLOCK]);
        special.extend([-0.0; BLOCK]);
        special.extend([0.7; BLOCK]);
        special.extend([-3.25e-3; BLOCK]);
        special.extend((0..BLOCK).map(|i| if i % 3 == 0 { f32::MAX } else { -f32::MAX }));
        special.extend((0..BLOCK).map(|i| if i == 17 { -f32::MAX } else { i as f32 }));
        special.extend((0..BLOCK).map(|i| if i == 3 { f32::MAX } else { 0.0 }));
        special.extend(tiny_blocks());
        special.extend(non_finite_blocks());
        let n_special = special.len() / BLOCK;
        let mut rows = vec![special];
        for n_blocks in [1, 2, 3, 18, 48, n_special + 1] {
            rows.push((0..n_blocks * BLOCK).map(|_| random()).collect());
        }
        // The special blocks again at odd offsets, so each is the second of a pair as well.
        rows.push([vec![1.0; BLOCK], rows[0].clone()].concat());
        // A long row of evenly spread values.
        rows.push((0..4096).map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.0123).collect());
        rows
    }

    /// A SIMD quantizer against the portable one directly, so the comparison does not depend
    /// on what `quantize_row` dispatches to, on every row of [`awkward_rows`].
    fn assert_matches_portable(name: &str, quantize: impl Fn(&[f32], &mut [Q8Block])) {
        for (r, x) in awkward_rows().iter().enumerate() {
            let n = x.len() / BLOCK;
            let (mut fast, mut portable) = (vec![Q8Block::default(); n], vec![Q8Block::default(); n]);
            quantize_row_portable(x, &mut portable);
            quantize(x, &mut fast);
            for (i, (a, b)) in fast.iter().zip(&portable).enumerate() {
                assert!(a.same_bits(b), "row {r} block {i}: {name} {a:?} vs portable {b:?}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_quantizer_matches_the_portable_one_bit_for_bit() {
        if !super::super::avx2::is_available() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        // SAFETY: AVX2 is available (checked above).
        assert_matches_portable("AVX2", |x, out| unsafe { super::super::avx2::quantize_row(x, out) });
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx512_quantizer_matches_the_portable_one_bit_for_bit() {
        if !super::avx512::is_available() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        // SAFETY: AVX-512F is available (checked above).
        assert_matches_portable("AVX-512", |x, out| unsafe { super::avx512::quantize_row(x, out) });
    }

    /// CPU time per block of each quantizer on decode-sized rows (SmolLM2's 576 and 1536):
    /// `cargo test --release -p cortexstream --lib quantizer_speed_probe -- --ignored --nocapture`.
    #[cfg(target_arch = "x86_64")]
    #[test]
    #[ignore]
    fn quantizer_speed_probe() {
        let thread_cpu_ns = || {
            let now = crate::engine::step_budget::thread_cpu_time().expect("a per-thread CPU clock");
            now.as_nanos() as u64
        };
        let rows: Vec<f32> = (0..32 * (576 + 1536)).map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.0123).collect();
        let mut blocks = vec![Q8Block::default(); rows.len() / BLOCK];
        type Quantizer = fn(&[f32], &mut [Q8Block]);
        let quantizers: [(&str, Quantizer); 3] = [
            ("portable", quantize_row_portable),
            // SAFETY (both): run only where available (checked below).
            ("avx2", |x, out| unsafe { super::super::avx2::quantize_row(x, out) }),
            ("avx512", |x, out| unsafe { super::avx512::quantize_row(x, out) }),
        ];
        for round in 0..3 {
            for (name, quantize) in quantizers {
                if name == "avx512" && !super::avx512::is_available() {
                    continue;
                }
                let start = thread_cpu_ns();
                for _ in 0..200 {
                    let mut at = 0;
                    for width in [576, 1536] {
                        for row in 0..32 {
                            let _ = row;
                            let (x, out) = (&rows[at..at + width], &mut blocks[at / BLOCK..(at + width) / BLOCK]);
                            quantize(std::hint::black_box(x), out);
                            at += width;
                        }
                    }
                }
                let ns = (thread_cpu_ns() - start) as f64 / (200 * blocks.len()) as f64;
                println!("round {round} {name}: {ns:.2} ns/block");
            }
        }
    }
}
