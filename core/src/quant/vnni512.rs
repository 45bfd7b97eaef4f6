//! Q8_0, Q6_K, Q5_0 and the `Offset` formats (Q5_1, Q4_K, Q5_K) on 512-bit `vpdpbusd` (AVX512-VNNI
//! with AVX512-F/BW): two 8-row groups side by side, one group in each 256-bit half of a
//! vector, so each nibble unpacking, each broadcast activation dword and each `vpdpbusd`
//! serves sixteen weight rows instead of eight.
//!
//! Every lane computes what the 256-bit VNNI kernels compute for its row (`group_kernel`'s
//! `q8`, `offset_kernel` and `halves` under `vnni`): the same exact integer block sums, then the same
//! float operations in the same order, block after block. So the bits are the same as every
//! other kernel's, and the choice of pairing (which depends only on the matrix, never on the
//! batch) does not show in the results.
//!
//! What bounds them on Zen 4 (2026-12-05, `examples/matmul_driver.rs`, CPU time): the
//! multiply pipes, not the unpacking. A Q5_0 row and block takes 8 `vpdpbusd` and 3 float
//! multiplies (`d_w d_a`, `m_w s_a`, the fused multiply-add), 11 multiply-pipe operations;
//! 576 x 576 at 512 rows runs at 11 of them per row and block at the VM's clock. Tiles of 8
//! rows (each block unpacked once per 8 rows) were no faster; dropping the `m_w s_a`
//! multiply (wrong bits, an experiment only) made it 11% faster. So only a cheaper float
//! epilogue on every path would speed the `Offset` formats up, e.g. Q5_0 as Q8_0 does it
//! (sums started at `-16 Σa`, exact, then `acc = fma(d_w d_a, dot, acc)`: 10 operations),
//! which changes the bits of every kernel, the portable one included.

use std::arch::x86_64::*;

use super::activations::Q8Block;
use super::blocks::offset::{format as offset_format, MIN_K, MIN_STORED, PLAIN_BIAS_16};
use super::blocks::QuantFormat;
use super::interleaved::LANES;
use super::{PrefetchShares, TILE};

/// Weight rows of a group pair: one per 32-bit lane of a 512-bit vector.
pub const PAIR_LANES: usize = 2 * LANES;

/// The batch size from which the pairs pay: below it the 256-bit kernels stay. With a few
/// activation rows a matmul streams its weights from memory, and there the two streams of a
/// pair were slower (Zen 4, one thread, weights far larger than the caches: the 262144-row
/// Q8_0 output head twice as slow at 2 rows, 17-60% at 4 and 6; Q5_0 even at 2, faster
/// from 4). From 8 rows, with the next pair prefetched a share per block, the pairs win
/// everywhere measured (2026-12-06, `examples/matmul_driver.rs`, CPU time, alternated pairs,
/// 16 -> 8: the head at 8 rows 16.3-19.2 -> 14.7-15.1 ms, at 12 rows 23.4-24.4 -> 16.9-17.6,
/// Q5_0 65536 x 640 at 8 rows 3.45-3.57 -> 2.33-2.38, Q6_K 16384 x 2048 at 12 rows 5.8 ->
/// 3.3-3.5, Q4_K 16384 x 1024 at 8 rows 1.65-1.90 -> 0.92-0.98, a cache-resident Q5_0 1536 x
/// 576 at 12 rows 0.084 -> 0.067-0.073). Both give the same bits, so where the switch sits
/// never shows in results.
pub const MIN_ROWS: usize = 8;

/// Whether this CPU can run [`pair_tile`].
pub fn is_available() -> bool {
    crate::cpu::has_avx512_vnni()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && crate::cpu::has_avx2_fma_f16c()
}

/// Whether [`pair_tile`] takes `format`.
pub fn pairs(format: QuantFormat) -> bool {
    matches!(
        format,
        QuantFormat::Q8_0
            | QuantFormat::Q5_0
            | QuantFormat::Q5_1
            | QuantFormat::Q4K
            | QuantFormat::Q5K
            | QuantFormat::Q6K
    )
}

/// `out[r][j]` = weight row `j` of the pair (rows 0..8 from `first`, 8..16 from `second`) ·
/// activation row `r`, for the `n <= TILE` activation rows stacked in `acts`. `first` and
/// `second` each hold one group's `n_blocks` blocks of `format` (one that [`pairs`] takes).
/// `ahead` (weights a later call will read) is prefetched, a share per block
/// ([`PrefetchShares`]); it changes no result.
///
/// # Safety
/// The CPU must support the features [`is_available`] checks.
pub unsafe fn pair_tile(
    format: QuantFormat,
    [first, second]: [&[u8]; 2],
    n_blocks: usize,
    acts: &[Q8Block],
    ahead: &[u8],
    out: &mut [[f32; PAIR_LANES]; TILE],
) {
    let n = acts.len() / n_blocks.max(1);
    let group_bytes = format.group_bytes(n_blocks);
    assert!(first.len() == group_bytes && second.len() == group_bytes && acts.len() == n * n_blocks && n <= TILE);
    match format {
        QuantFormat::Q8_0 => by_tile_height!(n, q8_pair; first, second, n_blocks, acts, ahead, out),
        QuantFormat::Q5_0 => {
            by_tile_height!(n, offset_pair, PLAIN_BIAS_16, true; first, second, n_blocks, acts, ahead, out)
        }
        QuantFormat::Q5_1 => {
            by_tile_height!(n, offset_pair, MIN_STORED, true; first, second, n_blocks, acts, ahead, out)
        }
        QuantFormat::Q4K => by_tile_height!(n, offset_pair, MIN_K, false; first, second, n_blocks, acts, ahead, out),
        QuantFormat::Q5K => by_tile_height!(n, offset_pair, MIN_K, true; first, second, n_blocks, acts, ahead, out),
        QuantFormat::Q6K => by_tile_height!(n, q6k_pair; first, second, n_blocks, acts, ahead, out),
        _ => unreachable!("{format:?} is not paired (`pairs`)"),
    }
}

/// The tile's `N` activation rows, `n_blocks` blocks each: cut once, so the kernels' reads of
/// block `b < n_blocks` need no bounds check per row and block.
#[inline]
fn activation_rows<const N: usize>(acts: &[Q8Block], n_blocks: usize) -> [&[Q8Block]; N] {
    std::array::from_fn(|r| &acts[r * n_blocks..][..n_blocks])
}

/// Eight f16 values at `low` and eight at `high`, as sixteen f32 (exact).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn load_f16x8_pair(low: *const u8, high: *const u8) -> __m512 {
    _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(
        _mm256_castsi128_si256(_mm_loadu_si128(low as *const __m128i)),
        _mm_loadu_si128(high as *const __m128i),
    ))
}

/// Eight unsigned bytes at `low` and eight at `high`, as sixteen f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn load_u8x8_pair(low: *const u8, high: *const u8) -> __m512 {
    let bytes = _mm_unpacklo_epi64(_mm_loadl_epi64(low as *const __m128i), _mm_loadl_epi64(high as *const __m128i));
    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes))
}

/// 32 bytes at `low` and 32 at `high`, as one vector.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn load_pair(low: *const u8, high: *const u8) -> __m512i {
    _mm512_inserti64x4::<1>(
        _mm512_castsi256_si512(_mm256_loadu_si256(low as *const __m256i)),
        _mm256_loadu_si256(high as *const __m256i),
    )
}

/// Activation bytes `4 v .. 4 v + 4` of `act`, in every 32-bit lane.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn broadcast4(act: &Q8Block, v: usize) -> __m512i {
    _mm512_set1_epi32((act.q.as_ptr().add(4 * v) as *const i32).read_unaligned())
}

/// Bit `v` of each byte of a bit vector moved to bit 4 (the 5-bit formats' high bit; the mask
/// drops what a 16-bit shift carries over).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn bit_4(bits: __m512i, v: usize) -> __m512i {
    let moved = match v {
        0 => _mm512_slli_epi16::<4>(bits),
        1 => _mm512_slli_epi16::<3>(bits),
        2 => _mm512_slli_epi16::<2>(bits),
        3 => _mm512_slli_epi16::<1>(bits),
        4 => bits,
        5 => _mm512_srli_epi16::<1>(bits),
        6 => _mm512_srli_epi16::<2>(bits),
        _ => _mm512_srli_epi16::<3>(bits),
    };
    _mm512_and_si512(moved, _mm512_set1_epi8(1 << 4))
}

/// Bits 2j, 2j + 1 of each byte of a crumb vector moved to bits 4, 5 (Q6_K's high bits).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn crumb_4(crumbs: __m512i, j: usize) -> __m512i {
    let moved = match j {
        0 => _mm512_slli_epi16::<4>(crumbs),
        1 => _mm512_slli_epi16::<2>(crumbs),
        2 => crumbs,
        _ => _mm512_srli_epi16::<2>(crumbs),
    };
    _mm512_and_si512(moved, _mm512_set1_epi8(3 << 4))
}

/// Eight signed bytes at `low` and eight at `high`, as sixteen i32.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn load_i8x8_pair(low: *const u8, high: *const u8) -> __m512i {
    _mm512_cvtepi8_epi32(_mm_unpacklo_epi64(
        _mm_loadl_epi64(low as *const __m128i),
        _mm_loadl_epi64(high as *const __m128i),
    ))
}

/// Q6_K, as `group_kernel`'s `halves` under `vnni` for sixteen rows: the stored values
/// (0..=63) go to `vpdpbusd` as they are and each 16-weight half's sum starts at `-32 Σ a`
/// over that half (the activation block's `minus_32_low_sum` / `minus_32_high_sum`, taken
/// once when the activations were quantized and broadcast from memory, not computed in a
/// general register and moved over for every row, tile and weight pair): `Σ (q - 32) a`,
/// exact in 32 bits. (Scaling the half sums in
/// f32, exact here, instead of `vpmulld` measured 1-2% slower on Zen 4.)
#[allow(clippy::needless_range_loop)] // `b` addresses the weights and the prefetch too
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
unsafe fn q6k_pair<const N: usize>(
    first: &[u8],
    second: &[u8],
    n_blocks: usize,
    acts: &[Q8Block],
    ahead: &[u8],
    out: &mut [[f32; PAIR_LANES]; TILE],
) {
    let ahead = PrefetchShares::new(ahead, n_blocks);
    let rows = activation_rows::<N>(acts, n_blocks);
    let format = QuantFormat::Q6K;
    let (block_bytes, values_at) = (format.group_block_bytes(), format.values_offset());
    // The half sums start at the activation block's `minus_32_low_sum` / `minus_32_high_sum`.
    const _: () = assert!(QuantFormat::Q6K.bias() == 32);
    let nibble = _mm512_set1_epi8(0x0f);
    let mut acc = [_mm512_setzero_ps(); N];
    for b in 0..n_blocks {
        ahead.prefetch(b);
        let (low, high) = (first.as_ptr().add(b * block_bytes), second.as_ptr().add(b * block_bytes));
        let fields_at = format.scale_fields_at(n_blocks, b);
        let d = load_f16x8_pair(first.as_ptr().add(fields_at), second.as_ptr().add(fields_at));
        let (sc0, sc1) = (format.sc_at(0), format.sc_at(1));
        let scales = [load_i8x8_pair(low.add(sc0), high.add(sc0)), load_i8x8_pair(low.add(sc1), high.add(sc1))];
        let row_acts: [&Q8Block; N] = std::array::from_fn(|r| &rows[r][b]);
        let (low_values, high_values) = (low.add(values_at), high.add(values_at));
        let mut dots = [_mm512_setzero_si512(); N];
        for (half, scale) in scales.into_iter().enumerate() {
            let mut sums: [__m512i; N] = std::array::from_fn(|r| {
                let act = row_acts[r];
                _mm512_set1_epi32(if half == 0 { act.minus_32_low_sum } else { act.minus_32_high_sum })
            });
            for pair in 2 * half..2 * half + 2 {
                let packed = load_pair(low_values.add(32 * pair), high_values.add(32 * pair));
                let crumbs_at = 128 + 32 * (pair / 2);
                let crumbs = load_pair(low_values.add(crumbs_at), high_values.add(crumbs_at));
                let (j_low, j_high) = ((2 * pair) % 4, (2 * pair + 1) % 4);
                let stored = [
                    _mm512_or_si512(_mm512_and_si512(packed, nibble), crumb_4(crumbs, j_low)),
                    _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(packed), nibble), crumb_4(crumbs, j_high)),
                ];
                for (k, values) in stored.into_iter().enumerate() {
                    for r in 0..N {
                        sums[r] = _mm512_dpbusd_epi32(sums[r], values, broadcast4(row_acts[r], 2 * pair + k));
                    }
                }
            }
            for r in 0..N {
                dots[r] = _mm512_add_epi32(dots[r], _mm512_mullo_epi32(scale, sums[r]));
            }
        }
        for r in 0..N {
            let scale = _mm512_mul_ps(d, _mm512_set1_ps(row_acts[r].d));
            acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dots[r]), acc[r]);
        }
    }
    for r in 0..N {
        _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}

/// The `Offset` formats (`FIVE`: values have a high-bit plane) and Q5_0, as `group_kernel`'s
/// `offset_kernel` under `vnni` for sixteen rows. Q5_0 takes 8 `vpdpbusd` and 2 float
/// multiplies per block and row (`d_w d_a`, the fma), the `Offset` formats one more (`m_w s_a`):
/// the multiply pipes bound this kernel.
#[allow(clippy::needless_range_loop)] // `b` addresses the weights and the prefetch too
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
unsafe fn offset_pair<const MIN: u8, const FIVE: bool, const N: usize>(
    first: &[u8],
    second: &[u8],
    n_blocks: usize,
    acts: &[Q8Block],
    ahead: &[u8],
    out: &mut [[f32; PAIR_LANES]; TILE],
) {
    let ahead = PrefetchShares::new(ahead, n_blocks);
    let rows = activation_rows::<N>(acts, n_blocks);
    let format = offset_format(MIN, FIVE);
    let (block_bytes, values_at) = (format.group_block_bytes(), format.values_offset());
    let nibble = _mm512_set1_epi8(0x0f);
    let mut acc = [_mm512_setzero_ps(); N];
    for b in 0..n_blocks {
        ahead.prefetch(b);
        let (low, high) = (first.as_ptr().add(b * block_bytes), second.as_ptr().add(b * block_bytes));
        let fields_at = format.scale_fields_at(n_blocks, b);
        let (low_fields, high_fields) = (first.as_ptr().add(fields_at), second.as_ptr().add(fields_at));
        let d = load_f16x8_pair(low_fields, high_fields);
        let (d, m) = match MIN {
            PLAIN_BIAS_16 => (d, _mm512_setzero_ps()),
            MIN_STORED => {
                (d, load_f16x8_pair(low_fields.add(QuantFormat::AUX_AT), high_fields.add(QuantFormat::AUX_AT)))
            }
            _ => {
                let dmin = load_f16x8_pair(low_fields.add(QuantFormat::AUX_AT), high_fields.add(QuantFormat::AUX_AT));
                let negative_dmin =
                    _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(dmin), _mm512_set1_epi32(i32::MIN)));
                let (sc, mins) = (format.sc_at(0), format.mins_at(0));
                (
                    _mm512_mul_ps(d, load_u8x8_pair(low.add(sc), high.add(sc))),
                    _mm512_mul_ps(negative_dmin, load_u8x8_pair(low.add(mins), high.add(mins))),
                )
            }
        };
        let row_acts: [&Q8Block; N] = std::array::from_fn(|r| &rows[r][b]);
        // Q5_0: `Σ (q + 16) a - 16 Σ a`, exact, the correction broadcast from memory.
        const _: () = assert!(QuantFormat::Q5_0.bias() == 16);
        let mut sums: [__m512i; N] = if MIN == PLAIN_BIAS_16 {
            std::array::from_fn(|r| _mm512_set1_epi32(row_acts[r].minus_16_sum))
        } else {
            [_mm512_setzero_si512(); N]
        };
        let bits =
            if FIVE { load_pair(low.add(values_at + 128), high.add(values_at + 128)) } else { _mm512_setzero_si512() };
        for pair in 0..4 {
            let packed = load_pair(low.add(values_at + 32 * pair), high.add(values_at + 32 * pair));
            let mut low_values = _mm512_and_si512(packed, nibble);
            let mut high_values = _mm512_and_si512(_mm512_srli_epi16::<4>(packed), nibble);
            if FIVE {
                low_values = _mm512_or_si512(low_values, bit_4(bits, 2 * pair));
                high_values = _mm512_or_si512(high_values, bit_4(bits, 2 * pair + 1));
            }
            for r in 0..N {
                let (a_low, a_high) = (broadcast4(row_acts[r], 2 * pair), broadcast4(row_acts[r], 2 * pair + 1));
                sums[r] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(sums[r], low_values, a_low), high_values, a_high);
            }
        }
        for r in 0..N {
            let dot = _mm512_cvtepi32_ps(sums[r]);
            let scale = _mm512_mul_ps(d, _mm512_set1_ps(row_acts[r].d));
            acc[r] = if MIN == PLAIN_BIAS_16 {
                _mm512_fmadd_ps(scale, dot, acc[r])
            } else {
                let offset = _mm512_mul_ps(m, _mm512_set1_ps(row_acts[r].s));
                _mm512_add_ps(acc[r], _mm512_fmadd_ps(scale, dot, offset))
            };
        }
    }
    for r in 0..N {
        _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}

#[allow(clippy::needless_range_loop)] // `b` addresses the weights and the prefetch too
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
unsafe fn q8_pair<const N: usize>(
    first: &[u8],
    second: &[u8],
    n_blocks: usize,
    acts: &[Q8Block],
    ahead: &[u8],
    out: &mut [[f32; PAIR_LANES]; TILE],
) {
    let ahead = PrefetchShares::new(ahead, n_blocks);
    let rows = activation_rows::<N>(acts, n_blocks);
    let (block_bytes, values_at) = (QuantFormat::Q8_0.group_block_bytes(), QuantFormat::Q8_0.values_offset());
    let top_bit = _mm512_set1_epi8(i8::MIN);
    let mut acc = [_mm512_setzero_ps(); N];
    for b in 0..n_blocks {
        ahead.prefetch(b);
        let (low, high) = (first.as_ptr().add(b * block_bytes), second.as_ptr().add(b * block_bytes));
        // The sixteen rows' f16 scales, widened exactly.
        let d16 = _mm256_inserti128_si256::<1>(
            _mm256_castsi128_si256(_mm_loadu_si128(low as *const __m128i)),
            _mm_loadu_si128(high as *const __m128i),
        );
        let d = _mm512_cvtph_ps(d16);
        let row_acts: [&Q8Block; N] = std::array::from_fn(|r| &rows[r][b]);
        // Σ (w + 128) a = Σ w a + 128 Σ a: start from -128 Σ a (exact, as in `vnni`), taken
        // when the activations were quantized and broadcast straight from memory.
        let mut sums: [__m512i; N] = std::array::from_fn(|r| _mm512_set1_epi32(row_acts[r].minus_128_sum));
        for v in 0..8 {
            let weights = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(low.add(values_at + 32 * v) as *const __m256i)),
                _mm256_loadu_si256(high.add(values_at + 32 * v) as *const __m256i),
            );
            // w XOR 0x80, read as unsigned, is w + 128.
            let unsigned = _mm512_xor_si512(weights, top_bit);
            for r in 0..N {
                sums[r] = _mm512_dpbusd_epi32(sums[r], unsigned, broadcast4(row_acts[r], v));
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
