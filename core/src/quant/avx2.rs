//! AVX2 + FMA + F16C kernels (x86-64 only), selected at runtime.
//!
//! Per block: the 32 weights become unsigned bytes (Q4 nibbles as they are; Q8_0 by moving
//! each weight's sign onto the activation), `maddubs` + `madd` give eight exact i32 partial
//! dot products, and one FMA adds them, scaled by `d_w * d_a`, to that pair's accumulator.
//!
//! Tiling: one weight block is unpacked once and applied to up to `TILE` activation rows.
//! Each activation row keeps its own accumulator and sees the same instruction sequence
//! whatever the tile size, so results do not depend on the batch.

use std::arch::x86_64::*;

use super::activations::Q8Block;
use super::blocks::QuantFormat;
use super::TILE;

/// Whether this CPU can run the kernels in this module.
pub fn is_available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// `out[r] = w_row · activation row r` for the `out.len() <= TILE` rows stacked in `acts`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`is_available`]).
pub unsafe fn dot_tile(format: QuantFormat, w_row: &[u8], acts: &[Q8Block], out: &mut [f32]) {
    let n_blocks = w_row.len() / format.block_bytes();
    assert!(acts.len() == out.len() * n_blocks && w_row.len() == n_blocks * format.block_bytes());
    match (format, out.len()) {
        (QuantFormat::Q4_0, 1) => tile::<Q4_0, 1>(w_row, n_blocks, acts, out),
        (QuantFormat::Q4_0, 2) => tile::<Q4_0, 2>(w_row, n_blocks, acts, out),
        (QuantFormat::Q4_0, 3) => tile::<Q4_0, 3>(w_row, n_blocks, acts, out),
        (QuantFormat::Q4_0, 4) => tile::<Q4_0, 4>(w_row, n_blocks, acts, out),
        (QuantFormat::Q4_1, 1) => tile::<Q4_1, 1>(w_row, n_blocks, acts, out),
        (QuantFormat::Q4_1, 2) => tile::<Q4_1, 2>(w_row, n_blocks, acts, out),
        (QuantFormat::Q4_1, 3) => tile::<Q4_1, 3>(w_row, n_blocks, acts, out),
        (QuantFormat::Q4_1, 4) => tile::<Q4_1, 4>(w_row, n_blocks, acts, out),
        (QuantFormat::Q8_0, 1) => tile::<Q8_0, 1>(w_row, n_blocks, acts, out),
        (QuantFormat::Q8_0, 2) => tile::<Q8_0, 2>(w_row, n_blocks, acts, out),
        (QuantFormat::Q8_0, 3) => tile::<Q8_0, 3>(w_row, n_blocks, acts, out),
        (QuantFormat::Q8_0, 4) => tile::<Q8_0, 4>(w_row, n_blocks, acts, out),
        (_, n) => panic!("tile of {n} rows; callers pass 1..={TILE}"),
    }
}

// Const-generic stand-ins for `QuantFormat`, so each format gets its own branch-free loop.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const FORMAT: u8, const N: usize>(w_row: &[u8], n_blocks: usize, acts: &[Q8Block], out: &mut [f32]) {
    let block_bytes = match FORMAT {
        Q4_0 => QuantFormat::Q4_0.block_bytes(),
        Q4_1 => QuantFormat::Q4_1.block_bytes(),
        _ => QuantFormat::Q8_0.block_bytes(),
    };
    let ones = _mm256_set1_epi16(1);
    let mut scaled = [_mm256_setzero_ps(); N];
    let mut offset = [0f32; N];
    for b in 0..n_blocks {
        let block = w_row.as_ptr().add(b * block_bytes);
        // (d, m, weights as signed or unsigned bytes)
        let (d, m, weights) = match FORMAT {
            Q4_0 => {
                let d = f16_pair(block).0;
                (d, -8.0 * d, unpack_nibbles(block.add(2)))
            }
            Q4_1 => {
                let (d, m) = f16_pair(block);
                (d, m, unpack_nibbles(block.add(4)))
            }
            _ => (f16_pair(block).0, 0.0, _mm256_loadu_si256(block.add(2) as *const __m256i)),
        };
        let unsigned_weights = if FORMAT == Q8_0 { _mm256_sign_epi8(weights, weights) } else { weights };
        for r in 0..N {
            let act = &*acts.as_ptr().add(r * n_blocks + b);
            let mut q = _mm256_loadu_si256(act.q.as_ptr() as *const __m256i);
            if FORMAT == Q8_0 {
                q = _mm256_sign_epi8(q, weights);
            }
            let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(unsigned_weights, q), ones);
            scaled[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * act.d), _mm256_cvtepi32_ps(dot), scaled[r]);
            if FORMAT != Q8_0 {
                offset[r] += m * act.s;
            }
        }
    }
    for r in 0..N {
        out[r] = horizontal_sum(scaled[r]) + offset[r];
    }
}

/// The two f16 values at `ptr` as f32 (for Q4_0 and Q8_0 only the first is meaningful).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn f16_pair(ptr: *const u8) -> (f32, f32) {
    let both = _mm_cvtph_ps(_mm_cvtsi32_si128((ptr as *const i32).read_unaligned()));
    (_mm_cvtss_f32(both), _mm_cvtss_f32(_mm_movehdup_ps(both)))
}

/// 16 bytes of packed nibbles to 32 bytes: low nibbles first (weights 0..16), then high ones.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn unpack_nibbles(ptr: *const u8) -> __m256i {
    let packed = _mm_loadu_si128(ptr as *const __m128i);
    let mask = _mm_set1_epi8(0x0f);
    let low = _mm_and_si128(packed, mask);
    let high = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
    _mm256_set_m128i(high, low)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn horizontal_sum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}
