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

            group_kernels!($features);

            /// Q8_0 for two groups at once (16 weight rows): each broadcast of four activation
            /// bytes feeds both groups' `vpdpbusd`, half the broadcasts per multiply of
            /// `group_tile`. Each (weight row, activation row) pair is summed exactly as there,
            /// so the results are the same bits. 16 accumulators: needs AVX-512's 32 registers.
            ///
            /// # Safety
            /// The CPU must support this module's features ([`is_available`]).
            #[allow(dead_code)] // used with AVX512-VNNI only (AVX-VNNI has 16 registers)
            pub unsafe fn q8_pair_tile(
                groups: [&[u8]; 2],
                n_blocks: usize,
                acts: &[Q8Block],
                out: [&mut [[f32; LANES]; TILE]; 2],
            ) {
                let n = acts.len() / n_blocks.max(1);
                let group_bytes = QuantFormat::Q8_0.group_bytes(n_blocks);
                assert!(groups.iter().all(|g| g.len() == group_bytes) && acts.len() == n * n_blocks && n <= TILE);
                by_tile_height!(n, q8_pair; groups, n_blocks, acts, out)
            }

            #[allow(dead_code)] // as `q8_pair_tile`
            #[target_feature(enable = $features)]
            unsafe fn q8_pair<const N: usize>(
                groups: [&[u8]; 2],
                n_blocks: usize,
                acts: &[Q8Block],
                out: [&mut [[f32; LANES]; TILE]; 2],
            ) {
                let (block_bytes, values_at) = (QuantFormat::Q8_0.group_block_bytes(), QuantFormat::Q8_0.values_offset());
                let mut acc = [[_mm256_setzero_ps(); N]; 2];
                for b in 0..n_blocks {
                    let blocks = [groups[0].as_ptr().add(b * block_bytes), groups[1].as_ptr().add(b * block_bytes)];
                    let row_acts: [&Q8Block; N] = std::array::from_fn(|r| &acts[r * n_blocks + b]);
                    let mut sums: [[__m256i; N]; 2] = [std::array::from_fn(|r| q8_start(row_acts[r])); 2];
                    for v in 0..8 {
                        let weights = blocks.map(|block| _mm256_loadu_si256(block.add(values_at + 32 * v) as *const __m256i));
                        let prepared = [q8_weights(weights[0]), q8_weights(weights[1])];
                        for r in 0..N {
                            let a = broadcast4(row_acts[r], v);
                            for g in 0..2 {
                                sums[g][r] = q8_step(sums[g][r], prepared[g], weights[g], a);
                            }
                        }
                    }
                    for g in 0..2 {
                        let d = load_f16x8(blocks[g]);
                        for r in 0..N {
                            let scale = _mm256_mul_ps(d, _mm256_set1_ps(row_acts[r].d));
                            acc[g][r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums[g][r]), acc[g][r]);
                        }
                    }
                }
                let [out0, out1] = out;
                for r in 0..N {
                    _mm256_storeu_ps(out0[r].as_mut_ptr(), acc[0][r]);
                    _mm256_storeu_ps(out1[r].as_mut_ptr(), acc[1][r]);
                }
            }

            // The inner steps of `group_kernels!`: `vpdpbusd` sums four u8 × i8 products into
            // each 32-bit lane without saturating.

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn q4_start() -> __m256i {
                _mm256_setzero_si256()
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn q4_step(sums: __m256i, low: __m256i, high: __m256i, a_low: __m256i, a_high: __m256i) -> __m256i {
                $dpbusd($dpbusd(sums, low, a_low), high, a_high)
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn q4_sum(sums: __m256i) -> __m256i {
                sums
            }

            /// Σ (w + 128) a = Σ w a + 128 Σ a: start from -128 Σ a. |Σ a| <= 32 * 127.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn q8_start(act: &Q8Block) -> __m256i {
                _mm256_set1_epi32(-128 * act.sum)
            }

            /// w XOR 0x80, read as unsigned, is w + 128.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn q8_weights(weights: __m256i) -> __m256i {
                _mm256_xor_si256(weights, _mm256_set1_epi8(i8::MIN))
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn q8_step(sums: __m256i, unsigned: __m256i, _weights: __m256i, acts: __m256i) -> __m256i {
                $dpbusd(sums, unsigned, acts)
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn u8_step(sums: __m256i, weights: __m256i, acts: __m256i) -> __m256i {
                $dpbusd(sums, weights, acts)
            }

            /// Signed weights as magnitudes, their signs moved onto the activations.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn s8_step(sums: __m256i, magnitudes: __m256i, weights: __m256i, acts: __m256i) -> __m256i {
                $dpbusd(sums, magnitudes, _mm256_sign_epi8(acts, weights))
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
