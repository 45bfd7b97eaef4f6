//! AVX2 + FMA + F16C kernels (x86-64 only), selected at runtime.
//!
//! They read the row-interleaved layout ([`super::interleaved`]): each 32-bit lane of a vector
//! belongs to one of eight weight rows. Per block and activation row:
//! - four activation bytes at a time are broadcast to every lane and `maddubs` multiplies them
//!   by four weights of each row (unsigned Q4 nibbles; for Q8_0 the weight magnitudes, the
//!   weights' signs moved onto the activations), giving eight rows' partial sums at once;
//! - the block's integer dot products (exact) become f32 once, times `d_w * d_a` (eight rows'
//!   scales in one vector), plus the Q4 offset term `m_w * s_a`, added to the row's accumulator.
//!
//! Tiling: each group's weights are unpacked once per block and applied to up to `TILE`
//! activation rows. Every (weight row, activation row) pair sees the same instruction sequence
//! whatever the tile size or its place in the batch, so results do not depend on the batch.

use std::arch::x86_64::*;

use super::activations::Q8Block;
use super::blocks::QuantFormat;
use super::interleaved::{m_at, LANES};
use super::TILE;

/// Whether this CPU can run the kernels in this module.
pub fn is_available() -> bool {
    crate::cpu::has_avx2_fma_f16c()
}

/// YMM0-15.
const VECTOR_REGISTERS: usize = 16;

/// The steps accumulate with `vpaddw` / `vpaddd` (the multiplies are off the chain).
const DOT_STEP_LATENCY: usize = 1;

group_kernels!("avx2,fma,f16c");

/// Quantizes one row (`x.len() == out.len() * 32`) block by block, exactly as
/// `activations::quantize_row_portable` does.
///
/// # Safety
/// The CPU must support AVX2 ([`is_available`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row(x: &[f32], out: &mut [Q8Block]) {
    assert_eq!(x.len(), out.len() * 32, "a row of whole blocks");
    for (values, block) in x.chunks_exact(32).zip(out.iter_mut()) {
        quantize_block(values.try_into().expect("32 values (asserted above)"), block);
    }
}

/// Quantizes 32 activations into `out` exactly as `activations::quantize_row_portable` does
/// (same scale, round half to even, exact integer sum).
///
/// # Safety
/// The CPU must support AVX2 ([`is_available`]).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_block(values: &[f32; 32], out: &mut Q8Block) {
    let p = values.as_ptr();
    let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
    let magnitude = |x| _mm256_andnot_ps(_mm256_set1_ps(-0.0), x);
    // NaN values are skipped, as `f32::max` skips them in the portable fold: `max_ps` returns
    // its second operand when either is NaN, so the running maximum (never NaN) goes second.
    let max = v.iter().fold(_mm256_setzero_ps(), |max, &x| _mm256_max_ps(magnitude(x), max));
    let max = _mm_max_ps(_mm256_castps256_ps128(max), _mm256_extractf128_ps(max, 1));
    let max = _mm_max_ps(max, _mm_movehl_ps(max, max));
    let amax = _mm_cvtss_f32(_mm_max_ss(max, _mm_movehdup_ps(max)));
    let (d, inverse) = super::activations::block_scale(amax);
    let inverse = _mm256_set1_ps(inverse);
    let round = |x| {
        let scaled = _mm256_mul_ps(x, inverse);
        // A NaN (a NaN input, or ±inf × 0 in a block whose scale is infinite) becomes 0, as
        // the portable `as i8` makes it; the conversion below would give i32::MIN (→ -128).
        let scaled = _mm256_and_ps(scaled, _mm256_cmp_ps::<_CMP_ORD_Q>(scaled, scaled));
        let nearest_even = _mm256_round_ps(scaled, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_cvtps_epi32(nearest_even)
    };
    let q = [round(v[0]), round(v[1]), round(v[2]), round(v[3])];
    let low = _mm256_add_epi32(q[0], q[1]);
    let (low_sum, sum) = (horizontal_sum(low), horizontal_sum(_mm256_add_epi32(low, _mm256_add_epi32(q[2], q[3]))));
    // Narrow 4×8 i32 to 32 i8; the packs work within 128-bit halves, the permute restores order.
    let packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(out.q.as_mut_ptr() as *mut __m256i, ordered);
    out.set_scale_and_sums(d, sum, low_sum);
}

/// The sum of eight i32 lanes (exact: the quantizer's lanes are at most 127 in magnitude).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn horizontal_sum(lanes: __m256i) -> i32 {
    let sum = _mm_add_epi32(_mm256_castsi256_si128(lanes), _mm256_extracti128_si256(lanes, 1));
    let sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b01_00_11_10));
    _mm_cvtsi128_si32(_mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b10_11_00_01)))
}

/// Four activation bytes `4 * v .. 4 * v + 4` of `act`, in every 32-bit lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn broadcast4(act: &Q8Block, v: usize) -> __m256i {
    _mm256_set1_epi32((act.q.as_ptr().add(4 * v) as *const i32).read_unaligned())
}

/// Eight f16 values at `ptr` as f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn load_f16x8(ptr: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(ptr as *const __m128i))
}

// The inner steps of `group_kernels!`.

/// Q4 sums in 16 bits: each `maddubs` lane is at most 2 * 15 * 127 = 3810 in magnitude, a
/// block's eight of them 30480 < 2^15.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q4_start() -> __m256i {
    _mm256_setzero_si256()
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q4_step(sums: __m256i, low: __m256i, high: __m256i, a_low: __m256i, a_high: __m256i) -> __m256i {
    let products = _mm256_add_epi16(_mm256_maddubs_epi16(low, a_low), _mm256_maddubs_epi16(high, a_high));
    _mm256_add_epi16(sums, products)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q4_sum(sums: __m256i) -> __m256i {
    _mm256_madd_epi16(sums, _mm256_set1_epi16(1))
}

/// Q8_0 sums in 32 bits: a `maddubs` lane reaches 2 * 128 * 127, so two could overflow 16 bits.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q8_start(_act: &Q8Block) -> __m256i {
    _mm256_setzero_si256()
}

/// `maddubs` takes unsigned bytes first: the weights' magnitudes, their signs moved onto the
/// activations in `q8_step`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q8_weights(weights: __m256i) -> __m256i {
    _mm256_sign_epi8(weights, weights)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q8_step(sums: __m256i, magnitudes: __m256i, weights: __m256i, acts: __m256i) -> __m256i {
    let signed_acts = _mm256_sign_epi8(acts, weights);
    let products = _mm256_madd_epi16(_mm256_maddubs_epi16(magnitudes, signed_acts), _mm256_set1_epi16(1));
    _mm256_add_epi32(sums, products)
}

/// Weights up to 63 (the 5-bit formats, Q6_K's stored values): a `maddubs` lane is at most
/// 2 * 63 * 128, short of saturating, widened to 32 bits at once.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn u8_step(sums: __m256i, weights: __m256i, acts: __m256i) -> __m256i {
    _mm256_add_epi32(sums, _mm256_madd_epi16(_mm256_maddubs_epi16(weights, acts), _mm256_set1_epi16(1)))
}
