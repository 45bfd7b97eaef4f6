//! Q8_0 on 512-bit `vpdpbusd` (AVX512-VNNI with AVX512-F/BW): two 8-row groups side by side,
//! one group in each 256-bit half of a vector, so each broadcast activation dword and each
//! `vpdpbusd` serves sixteen weight rows instead of eight.
//!
//! Every lane computes what the 256-bit VNNI kernel computes for its row (`vnni`): the same
//! exact integer block sum (`Σ (w + 128) a` started at `-128 Σ a`), then `d_w * d_a`, then one
//! fused multiply-add into the row's accumulator, block after block. So the bits are the same
//! as every other kernel's, and the choice of pairing (which depends only on the matrix, never
//! on the batch) does not show in the results.

use std::arch::x86_64::*;

use super::activations::Q8Block;
use super::blocks::QuantFormat;
use super::interleaved::LANES;
use super::TILE;

/// Weight rows of a group pair: one per 32-bit lane of a 512-bit vector.
pub const PAIR_LANES: usize = 2 * LANES;

/// Whether this CPU can run [`q8_pair_tile`].
pub fn is_available() -> bool {
    crate::cpu::has_avx512_vnni()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && crate::cpu::has_avx2_fma_f16c()
}

/// `out[r][j]` = weight row `j` of the pair (rows 0..8 from `first`, 8..16 from `second`) ·
/// activation row `r`, for the `n <= TILE` activation rows stacked in `acts`. `first` and
/// `second` each hold one Q8_0 group's `n_blocks` blocks.
///
/// # Safety
/// The CPU must support the features [`is_available`] checks.
pub unsafe fn q8_pair_tile(
    first: &[u8],
    second: &[u8],
    n_blocks: usize,
    acts: &[Q8Block],
    out: &mut [[f32; PAIR_LANES]; TILE],
) {
    let n = acts.len() / n_blocks.max(1);
    let group_bytes = QuantFormat::Q8_0.group_bytes(n_blocks);
    assert!(first.len() == group_bytes && second.len() == group_bytes && acts.len() == n * n_blocks && n <= TILE);
    by_tile_height!(n, q8_pair; first, second, n_blocks, acts, out);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
unsafe fn q8_pair<const N: usize>(
    first: &[u8],
    second: &[u8],
    n_blocks: usize,
    acts: &[Q8Block],
    out: &mut [[f32; PAIR_LANES]; TILE],
) {
    let (block_bytes, values_at) = (QuantFormat::Q8_0.group_block_bytes(), QuantFormat::Q8_0.values_offset());
    let top_bit = _mm512_set1_epi8(i8::MIN);
    let mut acc = [_mm512_setzero_ps(); N];
    for b in 0..n_blocks {
        let (low, high) = (first.as_ptr().add(b * block_bytes), second.as_ptr().add(b * block_bytes));
        // The sixteen rows' f16 scales, widened exactly.
        let d16 = _mm256_inserti128_si256::<1>(
            _mm256_castsi128_si256(_mm_loadu_si128(low as *const __m128i)),
            _mm_loadu_si128(high as *const __m128i),
        );
        let d = _mm512_cvtph_ps(d16);
        let row_acts: [&Q8Block; N] = std::array::from_fn(|r| &acts[r * n_blocks + b]);
        // Σ (w + 128) a = Σ w a + 128 Σ a: start from -128 Σ a (exact, as in `vnni`).
        let mut sums: [__m512i; N] = std::array::from_fn(|r| _mm512_set1_epi32(-128 * row_acts[r].sum));
        for v in 0..8 {
            let weights = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(low.add(values_at + 32 * v) as *const __m256i)),
                _mm256_loadu_si256(high.add(values_at + 32 * v) as *const __m256i),
            );
            // w XOR 0x80, read as unsigned, is w + 128.
            let unsigned = _mm512_xor_si512(weights, top_bit);
            for r in 0..N {
                let four = (row_acts[r].q.as_ptr().add(4 * v) as *const i32).read_unaligned();
                sums[r] = _mm512_dpbusd_epi32(sums[r], unsigned, _mm512_set1_epi32(four));
            }
        }
        for r in 0..N {
            let scale = _mm512_mul_ps(d, _mm512_set1_ps(row_acts[r].d));
            acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(sums[r]), acc[r]);
        }
    }
    for r in 0..N {
        _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}
