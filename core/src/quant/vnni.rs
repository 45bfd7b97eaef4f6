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
/// using `$dpbusd` as the `vpdpbusd` intrinsic (and `gfni`: GFNI for the high-bit merges).
macro_rules! vnni_kernels {
    (
        $(#[$doc:meta])* $name:ident, $features:literal, $registers:literal, $detect:path, $dpbusd:ident
        $(, $merges:ident)?
    ) => {
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

            /// The vector registers `$features` give (YMM0-15, or YMM0-31 with AVX-512VL).
            const VECTOR_REGISTERS: usize = $registers;

            /// Each step is a `vpdpbusd` into the accumulator (4-5 cycles on Zen 4 and Intel cores).
            const DOT_STEP_LATENCY: usize = 4;

            group_kernels!($features $(, $merges)?);

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
        }
    };
}

/// `vpdpbusd` in its EVEX encoding on 256-bit vectors (AVX512-VNNI + AVX512-VL): the kernels
/// with GFNI's bit merges where the CPU has it (Ice Lake, Zen 4 and later), else with shifts
/// (Cascade Lake). Both give the same bits.
pub mod avx512 {
    use super::{Q8Block, QuantFormat, LANES, TILE};

    /// Whether this CPU can run the kernels in this module.
    pub fn is_available() -> bool {
        super::avx512_shifts::is_available()
    }

    /// `group_tile` of [`super::avx512_gfni`] or [`super::avx512_shifts`].
    ///
    /// # Safety
    /// The CPU must support this module's features ([`is_available`]).
    #[inline]
    pub unsafe fn group_tile(
        format: QuantFormat,
        group: &[u8],
        n_blocks: usize,
        acts: &[Q8Block],
        out: &mut [[f32; LANES]; TILE],
    ) {
        if has_gfni() {
            super::avx512_gfni::group_tile(format, group, n_blocks, acts, out)
        } else {
            super::avx512_shifts::group_tile(format, group, n_blocks, acts, out)
        }
    }

    /// `tile_kernel` of [`super::avx512_gfni`] or [`super::avx512_shifts`].
    pub fn tile_kernel(format: QuantFormat, n: usize) -> crate::quant::TileKernel {
        if has_gfni() {
            super::avx512_gfni::tile_kernel(format, n)
        } else {
            super::avx512_shifts::tile_kernel(format, n)
        }
    }

    /// Whether [`super::avx512_gfni`] runs here, asked once: a matmul calls `group_tile` once
    /// per group and tile, and the feature checks behind `is_available` cost more than a load.
    fn has_gfni() -> bool {
        static GFNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *GFNI.get_or_init(super::avx512_gfni::is_available)
    }
}

vnni_kernels!(
    /// The AVX512-VNNI kernels with GFNI (`vgf2p8affineqb`) for the 5th and 6th bits.
    avx512_gfni,
    "avx512vnni,avx512vl,gfni,avx2,fma,f16c",
    32,
    super::has_avx512_vnni_gfni,
    _mm256_dpbusd_epi32,
    gfni
);

vnni_kernels!(
    /// The AVX512-VNNI kernels for CPUs without GFNI.
    avx512_shifts,
    "avx512vnni,avx512vl,avx2,fma,f16c",
    32,
    crate::cpu::has_avx512_vnni,
    _mm256_dpbusd_epi32
);

/// AVX512-VNNI (with AVX512-VL) and GFNI.
fn has_avx512_vnni_gfni() -> bool {
    crate::cpu::has_avx512_vnni() && is_x86_feature_detected!("gfni")
}

vnni_kernels!(
    /// `vpdpbusd` in its VEX encoding (AVX-VNNI).
    avx,
    "avxvnni,avx2,fma,f16c",
    16,
    crate::cpu::has_avx_vnni,
    _mm256_dpbusd_avx_epi32
);
