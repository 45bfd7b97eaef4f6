//! VNNI kernels: the AVX2 kernels' layout and arithmetic, with each `maddubs` + `madd` + add
//! replaced by one `vpdpbusd` (four u8 × i8 products summed straight into a 32-bit lane).
//!
//! On the AVX2 path a block costs about five vector operations per multiply instruction
//! (nibble unpacking, the 16-bit partial sums and their widening, the sign tricks of Q8_0); the
//! machine runs out of vector-pipe slots long before it runs out of multipliers. `vpdpbusd`
//! accumulates in 32 bits without saturating, so a block's dot product is a chain of eight of
//! them into one register, and Q8_0 needs no sign tricks: its weights are made unsigned by
//! adding 128 (an XOR of the top bit), and the accumulator starts at `-128 Σ a` to take that
//! back off, in exact integers.
//!
//! Every block's integer dot product is exact, as on the AVX2 path, and the float arithmetic
//! that follows is the same operations in the same order, so the two paths give identical bits.
//!
//! Two instruction encodings carry `vpdpbusd` on 256-bit vectors: AVX512-VNNI with AVX512-VL
//! (Ice Lake and later Xeons, Zen 4 and later) and AVX-VNNI (Alder Lake and later client
//! cores, which lack AVX-512). [`vnni_kernels!`] instantiates the same code for each.

use super::activations::Q8Block;
use super::blocks::QuantFormat;
use super::interleaved::LANES;
use super::TILE;

/// Defines module `$name`: `is_available()` and `group_tile()` compiled with `$features`,
/// using `$dpbusd` as the `vpdpbusd` intrinsic.
macro_rules! vnni_kernels {
    ($(#[$doc:meta])* $name:ident, $features:literal, $detect:path, $dpbusd:ident) => {
        $(#[$doc])*
        pub mod $name {
            use std::arch::x86_64::*;

            use super::super::avx2::{broadcast4, load_f16x8};
            use super::super::interleaved::m_at;
            use super::{Q8Block, QuantFormat, LANES, TILE};

            /// Whether this CPU can run the kernels in this module.
            pub fn is_available() -> bool {
                crate::cpu::has_avx2_fma_f16c() && $detect()
            }

            /// Same contract as `avx2::group_tile`.
            ///
            /// # Safety
            /// The CPU must support the module's features ([`is_available`]).
            pub unsafe fn group_tile(
                format: QuantFormat,
                group: &[u8],
                n_blocks: usize,
                acts: &[Q8Block],
                out: &mut [[f32; LANES]; TILE],
            ) {
                let n = acts.len() / n_blocks.max(1);
                assert!(
                    group.len() == n_blocks * format.group_block_bytes() && acts.len() == n * n_blocks && n <= TILE
                );
                match format {
                    QuantFormat::Q4_0 => by_tile_height!(n, q4, false; group, n_blocks, acts, out),
                    QuantFormat::Q4_1 => by_tile_height!(n, q4, true; group, n_blocks, acts, out),
                    QuantFormat::Q8_0 => by_tile_height!(n, q8; group, n_blocks, acts, out),
                }
            }

            /// Q4_0 (`OFFSET == false`, `m = -8 d`) and Q4_1 (`OFFSET == true`, `m` stored).
            #[target_feature(enable = $features)]
            unsafe fn q4<const OFFSET: bool, const N: usize>(
                group: &[u8],
                n_blocks: usize,
                acts: &[Q8Block],
                out: &mut [[f32; LANES]; TILE],
            ) {
                let format = if OFFSET { QuantFormat::Q4_1 } else { QuantFormat::Q4_0 };
                let (block_bytes, values_at) = (format.group_block_bytes(), format.values_offset());
                let nibble = _mm256_set1_epi8(0x0f);
                let mut acc = [_mm256_setzero_ps(); N];
                for b in 0..n_blocks {
                    let block = group.as_ptr().add(b * block_bytes);
                    let d = load_f16x8(block);
                    let m = if OFFSET { load_f16x8(block.add(m_at(0))) } else { _mm256_mul_ps(d, _mm256_set1_ps(-8.0)) };
                    let row_acts: [&Q8Block; N] = std::array::from_fn(|r| &acts[r * n_blocks + b]);
                    // Low and high nibbles in separate accumulators: two dependency chains per
                    // activation row keep more `vpdpbusd` in flight. Exact either way.
                    let mut low_sums = [_mm256_setzero_si256(); N];
                    let mut high_sums = [_mm256_setzero_si256(); N];
                    for pair in 0..4 {
                        let packed = _mm256_loadu_si256(block.add(values_at + 32 * pair) as *const __m256i);
                        let low = _mm256_and_si256(packed, nibble);
                        let high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble);
                        for r in 0..N {
                            low_sums[r] = $dpbusd(low_sums[r], low, broadcast4(row_acts[r], 2 * pair));
                            high_sums[r] = $dpbusd(high_sums[r], high, broadcast4(row_acts[r], 2 * pair + 1));
                        }
                    }
                    for r in 0..N {
                        let dot = _mm256_cvtepi32_ps(_mm256_add_epi32(low_sums[r], high_sums[r]));
                        let offset = _mm256_mul_ps(m, _mm256_set1_ps(row_acts[r].s));
                        let scale = _mm256_mul_ps(d, _mm256_set1_ps(row_acts[r].d));
                        acc[r] = _mm256_add_ps(acc[r], _mm256_fmadd_ps(scale, dot, offset));
                    }
                }
                for r in 0..N {
                    _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
                }
            }

            #[target_feature(enable = $features)]
            unsafe fn q8<const N: usize>(
                group: &[u8],
                n_blocks: usize,
                acts: &[Q8Block],
                out: &mut [[f32; LANES]; TILE],
            ) {
                let (block_bytes, values_at) = (QuantFormat::Q8_0.group_block_bytes(), QuantFormat::Q8_0.values_offset());
                let bias = _mm256_set1_epi8(i8::MIN);
                let mut acc = [_mm256_setzero_ps(); N];
                for b in 0..n_blocks {
                    let block = group.as_ptr().add(b * block_bytes);
                    let d = load_f16x8(block);
                    let row_acts: [&Q8Block; N] = std::array::from_fn(|r| &acts[r * n_blocks + b]);
                    // Σ (w + 128) a = Σ w a + 128 Σ a: start from -128 Σ a. |Σ a| <= 32 * 127.
                    let mut sums: [__m256i; N] = std::array::from_fn(|r| _mm256_set1_epi32(-128 * row_acts[r].sum));
                    for v in 0..8 {
                        let weights = _mm256_loadu_si256(block.add(values_at + 32 * v) as *const __m256i);
                        // w XOR 0x80, read as unsigned, is w + 128.
                        let unsigned = _mm256_xor_si256(weights, bias);
                        for r in 0..N {
                            sums[r] = $dpbusd(sums[r], unsigned, broadcast4(row_acts[r], v));
                        }
                    }
                    for r in 0..N {
                        let scale = _mm256_mul_ps(d, _mm256_set1_ps(row_acts[r].d));
                        acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums[r]), acc[r]);
                    }
                }
                for r in 0..N {
                    _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
                }
            }
        }
    };
}

vnni_kernels!(
    /// `vpdpbusd` in its EVEX encoding on 256-bit vectors (AVX512-VNNI + AVX512-VL).
    avx512,
    "avx512vnni,avx512vl,avx2,fma,f16c",
    crate::cpu::has_avx512_vnni,
    _mm256_dpbusd_epi32
);

vnni_kernels!(
    /// `vpdpbusd` in its VEX encoding (AVX-VNNI).
    avx,
    "avxvnni,avx2,fma,f16c",
    crate::cpu::has_avx_vnni,
    _mm256_dpbusd_avx_epi32
);
