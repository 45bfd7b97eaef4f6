//! The shape every 256-bit group kernel shares, written once as macros: the AVX2 and VNNI
//! kernels differ only in how they multiply four weight bytes by four activation bytes and sum
//! them, so each kernel module defines that inner step and [`group_kernels!`] builds the rest
//! (block loop, scales, nibble unpacking, the float epilogue) compiled with the module's CPU
//! features. The float epilogue being one piece of code is what makes the kernels' results
//! bit-identical.

/// Calls `$kernel::<[$flag,] N>(args)` with the tile height `$n` (1..=TILE) as the const `N`:
/// one instantiation per height, so every loop over a tile's rows is unrolled.
macro_rules! by_tile_height {
    ($n:expr, $kernel:ident $(, $flag:expr)*; $($arg:expr),*) => {{
        const _: () = assert!(super::TILE == 4, "by_tile_height! covers tiles of up to 4 rows");
        match $n {
            0 => {}
            1 => $kernel::<$($flag,)* 1>($($arg),*),
            2 => $kernel::<$($flag,)* 2>($($arg),*),
            3 => $kernel::<$($flag,)* 3>($($arg),*),
            _ => $kernel::<$($flag,)* 4>($($arg),*),
        }
    }};
}

/// `$kernel::<[$flag,] N>` for the tile height `$n` (1..=TILE) as a [`crate::quant::TileKernel`].
macro_rules! tile_kernel_of_height {
    ($n:expr, $kernel:ident $(, $flag:expr)*) => {{
        const _: () = assert!(super::TILE == 4, "tile_kernel_of_height! covers tiles of up to 4 rows");
        match $n {
            1 => $kernel::<$($flag,)* 1> as crate::quant::TileKernel,
            2 => $kernel::<$($flag,)* 2>,
            3 => $kernel::<$($flag,)* 3>,
            _ => $kernel::<$($flag,)* 4>,
        }
    }};
}

/// Defines `group_tile` (and its `q4` and `q8` kernels) in the invoking module, compiled with
/// `$features`. The module provides, as `#[inline]` functions with those features:
///
/// - `q4_start() -> S`, `q4_step(S, low, high, a_low, a_high) -> S`, `q4_sum(S) -> __m256i`:
///   a Q4 block's dot products for 8 rows, from the unpacked low and high nibble vectors and
///   the matching broadcast activation bytes, as exact 32-bit sums;
/// - `q8_start(&Q8Block) -> __m256i`, `q8_weights(w) -> W`, `q8_step(__m256i, W, w, a) ->
///   __m256i`: the same for Q8_0, where `q8_weights` prepares a weight vector once for every
///   activation row;
///
/// - `u8_step(__m256i, w, a) -> __m256i`: adds four u8 × i8 products per lane, unsaturated
///   for weights up to 63 (the 5-bit formats, Q6_K's and Q3_K's stored values), to 32-bit sums;
///
/// and has `broadcast4`, `load_f16x8`, `m_at`, `Q8Block`, `QuantFormat`, `LANES` and `TILE`
/// in scope, and `VECTOR_REGISTERS`, the vector registers its features give (16 or 32), and
/// `DOT_STEP_LATENCY`, the cycles one step adds to its accumulator's dependency chain.
///
/// The regrouped formats (`regroup`) follow the portable kernel's epilogues operation for
/// operation: `Offset` formats like Q4_1 with their scale and min computed per block, `Plain`
/// like Q8_0, `HalfMins` (Q2_K) with the activations' half sums.
macro_rules! group_kernels {
    ($features:literal) => {
        group_kernels!(@kernels $features);
        merges_by_shifts!($features);
    };
    ($features:literal, gfni) => {
        group_kernels!(@kernels $features);
        merges_by_gfni!($features);
    };
    (@kernels $features:literal) => {
        /// `out[r][j] = weight row j of the group · activation row r` for the `n <= TILE`
        /// activation rows stacked in `acts` (`n_blocks` blocks each). `group` holds the
        /// group's `n_blocks` blocks.
        ///
        /// # Safety
        /// The CPU must support this module's features ([`is_available`]).
        pub unsafe fn group_tile(
            format: QuantFormat,
            group: &[u8],
            n_blocks: usize,
            acts: &[Q8Block],
            out: &mut [[f32; LANES]; TILE],
        ) {
            let n = acts.len() / n_blocks.max(1);
            assert!(
                group.len() == format.group_bytes(n_blocks) && acts.len() == n * n_blocks && n <= TILE
            );
            match format {
                QuantFormat::Q4_0 => by_tile_height!(n, q4, false; format, group, n_blocks, acts, out),
                QuantFormat::Q4_1 => by_tile_height!(n, q4, true; format, group, n_blocks, acts, out),
                QuantFormat::Q8_0 => by_tile_height!(n, q8; format, group, n_blocks, acts, out),
                QuantFormat::Q5_0 => by_tile_height!(n, offset_kernel, PLAIN_BIAS_16, true; format, group, n_blocks, acts, out),
                QuantFormat::Q5_1 => by_tile_height!(n, offset_kernel, MIN_STORED, true; format, group, n_blocks, acts, out),
                QuantFormat::Q4K => by_tile_height!(n, offset_kernel, MIN_K, false; format, group, n_blocks, acts, out),
                QuantFormat::Q5K => by_tile_height!(n, offset_kernel, MIN_K, true; format, group, n_blocks, acts, out),
                QuantFormat::IQ4NL => by_tile_height!(n, iq4, false; format, group, n_blocks, acts, out),
                QuantFormat::IQ4XS => by_tile_height!(n, iq4, true; format, group, n_blocks, acts, out),
                QuantFormat::Q6K => by_tile_height!(n, halves, PACK_NIBBLES_CRUMBS; format, group, n_blocks, acts, out),
                QuantFormat::Q3K => by_tile_height!(n, halves, PACK_CRUMBS_BIT; format, group, n_blocks, acts, out),
                QuantFormat::Q2K => by_tile_height!(n, q2k; format, group, n_blocks, acts, out),
            }
        }

        /// The kernel `group_tile` runs for `format` and tiles of `n` rows (1..=TILE), for a
        /// caller that runs many groups with one format and height: the dispatch (and the
        /// checks) happen once, not once per group, which at one row is a group of some 250
        /// cycles. The caller takes on `group_tile`'s checks: `group.len() ==
        /// format.group_bytes(n_blocks)`, `acts.len() == n * n_blocks`.
        pub fn tile_kernel(format: QuantFormat, n: usize) -> crate::quant::TileKernel {
            assert!((1..=TILE).contains(&n), "tile height {n}");
            match format {
                QuantFormat::Q4_0 => tile_kernel_of_height!(n, q4, false),
                QuantFormat::Q4_1 => tile_kernel_of_height!(n, q4, true),
                QuantFormat::Q8_0 => tile_kernel_of_height!(n, q8),
                QuantFormat::Q5_0 => tile_kernel_of_height!(n, offset_kernel, PLAIN_BIAS_16, true),
                QuantFormat::Q5_1 => tile_kernel_of_height!(n, offset_kernel, MIN_STORED, true),
                QuantFormat::Q4K => tile_kernel_of_height!(n, offset_kernel, MIN_K, false),
                QuantFormat::Q5K => tile_kernel_of_height!(n, offset_kernel, MIN_K, true),
                QuantFormat::IQ4NL => tile_kernel_of_height!(n, iq4, false),
                QuantFormat::IQ4XS => tile_kernel_of_height!(n, iq4, true),
                QuantFormat::Q6K => tile_kernel_of_height!(n, halves, PACK_NIBBLES_CRUMBS),
                QuantFormat::Q3K => tile_kernel_of_height!(n, halves, PACK_CRUMBS_BIT),
                QuantFormat::Q2K => tile_kernel_of_height!(n, q2k),
            }
        }

        use crate::quant::blocks::offset::{format as offset_format, MIN_K, MIN_STORED, PLAIN_BIAS_16};

        /// Block `b`'s eight f16 `d` values (`aux` follows at `AUX_AT`): in the block, or in its
        /// super-block's header (`regroup`).
        #[inline]
        unsafe fn scale_fields(format: QuantFormat, group: &[u8], n_blocks: usize, b: usize) -> *const u8 {
            group.as_ptr().add(format.scale_fields_at(n_blocks, b))
        }

        /// Eight unsigned bytes at `ptr` as f32.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn load_u8x8(ptr: *const u8) -> __m256 {
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(ptr as *const __m128i)))
        }

        /// Eight signed bytes at `ptr` as i32.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn load_i8x8(ptr: *const u8) -> __m256i {
            _mm256_cvtepi8_epi32(_mm_loadl_epi64(ptr as *const __m128i))
        }

        /// Bit `v` of each byte of a bit vector (the 5-bit formats' bit 4, Q3_K's bit 2) moved
        /// to bit `TO` (the mask drops what a 16-bit shift carries over).
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn bit_at<const TO: i32>(bits: __m256i, v: usize) -> __m256i {
            let moved = match TO - v as i32 {
                4 => _mm256_slli_epi16(bits, 4),
                3 => _mm256_slli_epi16(bits, 3),
                2 => _mm256_slli_epi16(bits, 2),
                1 => _mm256_slli_epi16(bits, 1),
                0 => bits,
                -1 => _mm256_srli_epi16(bits, 1),
                -2 => _mm256_srli_epi16(bits, 2),
                -3 => _mm256_srli_epi16(bits, 3),
                -4 => _mm256_srli_epi16(bits, 4),
                _ => _mm256_srli_epi16(bits, 5),
            };
            _mm256_and_si256(moved, _mm256_set1_epi8(1 << TO))
        }

        /// Bits `2j`, `2j + 1` of each byte of a crumb vector moved to bits `TO`, `TO + 1`.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn crumb_at<const TO: i32>(crumbs: __m256i, j: usize) -> __m256i {
            let moved = match TO - 2 * j as i32 {
                4 => _mm256_slli_epi16(crumbs, 4),
                2 => _mm256_slli_epi16(crumbs, 2),
                0 => crumbs,
                -2 => _mm256_srli_epi16(crumbs, 2),
                -4 => _mm256_srli_epi16(crumbs, 4),
                _ => _mm256_srli_epi16(crumbs, 6),
            };
            _mm256_and_si256(moved, _mm256_set1_epi8(3 << TO))
        }


        /// Independent chains of multiply-adds per activation row and block. With one chain, a
        /// single row's block is eight dependent `vpdpbusd`, whose latency the out-of-order
        /// window does not cover; two chains (summed once per block, an exact integer add) halve
        /// it. Measured on Zen 4 (AVX512-VNNI, 1-row driver CPU time): Q5_0 1536x576 at 1 row
        /// 19.4 -> 16.2 us, 2 rows 21.3 -> 19.8, 3 rows 26.0 -> 25.1; Q4_K 576x1536 at 3 rows
        /// 24.0 -> 22.6, 4 rows 29.5 -> 28.2. With 16 vector registers (AVX2, AVX-VNNI) the
        /// extra chains of 2-4 rows would not fit beside the weights: one row only there. The
        /// AVX2 steps end in a one-cycle add, not a `vpdpbusd`: one chain there.
        const fn chains(n: usize) -> usize {
            if DOT_STEP_LATENCY > 1 && (n == 1 || VECTOR_REGISTERS >= 32) {
                2
            } else {
                1
            }
        }

        /// The `Offset` formats Q5_1, Q4_K, Q5_K (`FIVE`: values have a high-bit plane), and Q5_0,
        /// whose stored values are unpacked the same way but whose dot starts at `-16 Σ a` (exact)
        /// and whose epilogue is `Plain`: one float multiply per block less.
        #[target_feature(enable = $features)]
        unsafe fn offset_kernel<const MIN: u8, const FIVE: bool, const N: usize>(
            format: QuantFormat,
            group: &[u8],
            n_blocks: usize,
            acts: &[Q8Block],
            out: &mut [[f32; LANES]; TILE],
        ) {
            debug_assert_eq!(format, offset_format(MIN, FIVE));
            let format = offset_format(MIN, FIVE);
            let (block_bytes, values_at) = (format.group_block_bytes(), format.values_offset());
            let nibble = _mm256_set1_epi8(0x0f);
            let mut acc = [_mm256_setzero_ps(); N];
            for b in 0..n_blocks {
                let block = group.as_ptr().add(b * block_bytes);
                let fields = scale_fields(format, group, n_blocks, b);
                let d = load_f16x8(fields);
                let (d, m) = match MIN {
                    PLAIN_BIAS_16 => (d, _mm256_setzero_ps()),
                    MIN_STORED => (d, load_f16x8(fields.add(QuantFormat::AUX_AT))),
                    _ => {
                        let negative_dmin = _mm256_xor_ps(load_f16x8(fields.add(QuantFormat::AUX_AT)), _mm256_set1_ps(-0.0));
                        (
                            _mm256_mul_ps(d, load_u8x8(block.add(format.sc_at(0)))),
                            _mm256_mul_ps(negative_dmin, load_u8x8(block.add(format.mins_at(0)))),
                        )
                    }
                };
                let row_acts: [&Q8Block; N] = std::array::from_fn(|r| &acts[r * n_blocks + b]);
                // Chain `pair % chains` takes a pair's products (both nibbles of it for Q4_K;
                // for the 5-bit formats chain 1 takes the high nibbles instead, when there are two).
                let mut sums = [[q4_start(); N]; 2];
                if MIN == PLAIN_BIAS_16 {
                    // Q5_0: `Σ (q + 16) a - 16 Σ a`, exact, the correction broadcast from memory.
                    const _: () = assert!(QuantFormat::Q5_0.bias() == 16);
                    (0..N).for_each(|r| sums[0][r] = _mm256_set1_epi32(row_acts[r].minus_16_sum));
                }
                let bits = if FIVE {
                    _mm256_loadu_si256(block.add(values_at + 128) as *const __m256i)
                } else {
                    _mm256_setzero_si256()
                };
                for pair in 0..4 {
                    let packed = _mm256_loadu_si256(block.add(values_at + 32 * pair) as *const __m256i);
                    let (low, high) = if FIVE {
                        (merge_bit(packed, bits, 2 * pair), merge_bit(_mm256_srli_epi16(packed, 4), bits, 2 * pair + 1))
                    } else {
                        (_mm256_and_si256(packed, nibble), _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble))
                    };
                    for r in 0..N {
                        let (a_low, a_high) = (broadcast4(row_acts[r], 2 * pair), broadcast4(row_acts[r], 2 * pair + 1));
                        if FIVE {
                            let high_chain = chains(N) - 1;
                            sums[0][r] = u8_step(sums[0][r], low, a_low);
                            sums[high_chain][r] = u8_step(sums[high_chain][r], high, a_high);
                        } else {
                            let chain = pair % chains(N);
                            sums[chain][r] = q4_step(sums[chain][r], low, high, a_low, a_high);
                        }
                    }
                }
                for r in 0..N {
                    let [first, second] =
                        if FIVE { [sums[0][r], sums[1][r]] } else { [q4_sum(sums[0][r]), q4_sum(sums[1][r])] };
                    let total = if chains(N) == 2 { _mm256_add_epi32(first, second) } else { first };
                    let dot = _mm256_cvtepi32_ps(total);
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(row_acts[r].d));
                    acc[r] = if MIN == PLAIN_BIAS_16 {
                        _mm256_fmadd_ps(scale, dot, acc[r])
                    } else {
                        let offset = _mm256_mul_ps(m, _mm256_set1_ps(row_acts[r].s));
                        _mm256_add_ps(acc[r], _mm256_fmadd_ps(scale, dot, offset))
                    };
                }
            }
            for r in 0..N {
                _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
            }
        }

        /// IQ4_NL and IQ4_XS (`SCALED`: a sub-scale per block): nibbles index the codebook
        /// (`vpshufb`), then the Q8_0 steps.
        #[target_feature(enable = $features)]
        unsafe fn iq4<const SCALED: bool, const N: usize>(
            format: QuantFormat,
            group: &[u8],
            n_blocks: usize,
            acts: &[Q8Block],
            out: &mut [[f32; LANES]; TILE],
        ) {
            let (block_bytes, values_at) = (format.group_block_bytes(), format.values_offset());
            let nibble = _mm256_set1_epi8(0x0f);
            let codebook =
                _mm256_broadcastsi128_si256(_mm_loadu_si128(crate::quant::regroup::IQ4_VALUES.as_ptr() as *const __m128i));
            let mut acc = [_mm256_setzero_ps(); N];
            for b in 0..n_blocks {
                let block = group.as_ptr().add(b * block_bytes);
                let d = load_f16x8(scale_fields(format, group, n_blocks, b));
                let d = if SCALED { _mm256_mul_ps(d, _mm256_cvtepi32_ps(load_i8x8(block.add(format.sc_at(0))))) } else { d };
                let row_acts: [&Q8Block; N] = std::array::from_fn(|r| &acts[r * n_blocks + b]);
                let mut sums: [__m256i; N] = std::array::from_fn(|r| q8_start(row_acts[r]));
                for pair in 0..4 {
                    let packed = _mm256_loadu_si256(block.add(values_at + 32 * pair) as *const __m256i);
                    let indices = [_mm256_and_si256(packed, nibble), _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble)];
                    for (half, index) in indices.into_iter().enumerate() {
                        let weights = _mm256_shuffle_epi8(codebook, index);
                        let prepared = q8_weights(weights);
                        for r in 0..N {
                            sums[r] = q8_step(sums[r], prepared, weights, broadcast4(row_acts[r], 2 * pair + half));
                        }
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

        /// How a kernel's values are packed (`regroup::Values`).
        const PACK_NIBBLES_CRUMBS: u8 = 1; // Q6_K
        const PACK_CRUMBS: u8 = 2; // Q2_K
        const PACK_CRUMBS_BIT: u8 = 3; // Q3_K

        /// The stored unsigned values of vectors `2 pair` and `2 pair + 1` of a block.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn unpack_pair<const PACK: u8>(values: *const u8, pair: usize) -> [__m256i; 2] {
            // No closures here: they need not inherit this function's CPU features.
            let (first, second) = (2 * pair, 2 * pair + 1);
            if PACK == PACK_NIBBLES_CRUMBS {
                let packed = _mm256_loadu_si256(values.add(32 * pair) as *const __m256i);
                let crumbs = _mm256_loadu_si256(values.add(128 + 32 * (pair / 2)) as *const __m256i);
                return [
                    merge_crumb(packed, crumbs, first % 4),
                    merge_crumb(_mm256_srli_epi16(packed, 4), crumbs, second % 4),
                ];
            }
            let crumbs = _mm256_loadu_si256(values.add(32 * (pair / 2)) as *const __m256i);
            let (low, high) = (crumb_at::<0>(crumbs, first % 4), crumb_at::<0>(crumbs, second % 4));
            if PACK == PACK_CRUMBS {
                return [low, high];
            }
            let bits = _mm256_loadu_si256(values.add(64) as *const __m256i);
            [_mm256_or_si256(low, bit_at::<2>(bits, first)), _mm256_or_si256(high, bit_at::<2>(bits, second))]
        }

        /// Q6_K and Q3_K: signed values (stored plus a bias) with an integer
        /// scale per 16-weight half.
        ///
        /// The stored values (0..=63, 0..=7) are multiplied as they are (`u8_step`) and each
        /// half's sum starts at `-bias Σ a` over that half (the activation block's `low_sum`
        /// and `sum`): `Σ (q - bias) a`, exact in 32 bits, with no sign moved per activation
        /// row. (Scaling the half sums in f32, exact here, instead of `vpmulld` measured 1-2%
        /// slower on Zen 4.)
        #[target_feature(enable = $features)]
        unsafe fn halves<const PACK: u8, const N: usize>(
            format: QuantFormat,
            group: &[u8],
            n_blocks: usize,
            acts: &[Q8Block],
            out: &mut [[f32; LANES]; TILE],
        ) {
            // Fixed at compile time, as in `offset_kernel`.
            debug_assert_eq!(format, if PACK == PACK_NIBBLES_CRUMBS { QuantFormat::Q6K } else { QuantFormat::Q3K });
            let format = if PACK == PACK_NIBBLES_CRUMBS { QuantFormat::Q6K } else { QuantFormat::Q3K };
            let (block_bytes, values_at) = (format.group_block_bytes(), format.values_offset());
            let bias = format.bias() as i32;
            let mut acc = [_mm256_setzero_ps(); N];
            for b in 0..n_blocks {
                let block = group.as_ptr().add(b * block_bytes);
                let d = load_f16x8(scale_fields(format, group, n_blocks, b));
                let scales = [load_i8x8(block.add(format.sc_at(0))), load_i8x8(block.add(format.sc_at(1)))];
                let row_acts: [&Q8Block; N] = std::array::from_fn(|r| &acts[r * n_blocks + b]);
                let mut dots = [_mm256_setzero_si256(); N];
                for (half, scale) in scales.into_iter().enumerate() {
                    let mut sums: [__m256i; N] = std::array::from_fn(|r| {
                        let half_sum = if half == 0 { row_acts[r].low_sum } else { row_acts[r].sum - row_acts[r].low_sum };
                        _mm256_set1_epi32(-bias * half_sum)
                    });
                    for pair in 2 * half..2 * half + 2 {
                        for (k, stored) in unpack_pair::<PACK>(block.add(values_at), pair).into_iter().enumerate() {
                            for r in 0..N {
                                sums[r] = u8_step(sums[r], stored, broadcast4(row_acts[r], 2 * pair + k));
                            }
                        }
                    }
                    for r in 0..N {
                        dots[r] = _mm256_add_epi32(dots[r], _mm256_mullo_epi32(scale, sums[r]));
                    }
                }
                for r in 0..N {
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(row_acts[r].d));
                    acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dots[r]), acc[r]);
                }
            }
            for r in 0..N {
                _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
            }
        }

        /// Q2_K: unsigned 2-bit values, integer scales and mins per 16-weight half; the mins
        /// take the activations' half sums.
        #[target_feature(enable = $features)]
        unsafe fn q2k<const N: usize>(
            format: QuantFormat,
            group: &[u8],
            n_blocks: usize,
            acts: &[Q8Block],
            out: &mut [[f32; LANES]; TILE],
        ) {
            let (block_bytes, values_at) = (format.group_block_bytes(), format.values_offset());
            let mut acc = [_mm256_setzero_ps(); N];
            for b in 0..n_blocks {
                let block = group.as_ptr().add(b * block_bytes);
                let fields = scale_fields(format, group, n_blocks, b);
                let d = load_f16x8(fields);
                let m = _mm256_xor_ps(load_f16x8(fields.add(QuantFormat::AUX_AT)), _mm256_set1_ps(-0.0));
                let scales = [load_i8x8(block.add(format.sc_at(0))), load_i8x8(block.add(format.sc_at(1)))];
                let mins = [
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(block.add(format.mins_at(0)) as *const __m128i)),
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(block.add(format.mins_at(1)) as *const __m128i)),
                ];
                let scales = scales.map(|s| _mm256_and_si256(s, _mm256_set1_epi32(0xff)));
                let row_acts: [&Q8Block; N] = std::array::from_fn(|r| &acts[r * n_blocks + b]);
                let mut dots = [_mm256_setzero_si256(); N];
                for (half, scale) in scales.into_iter().enumerate() {
                    let mut sums = [_mm256_setzero_si256(); N];
                    for pair in 2 * half..2 * half + 2 {
                        for (k, weights) in unpack_pair::<PACK_CRUMBS>(block.add(values_at), pair).into_iter().enumerate() {
                            for r in 0..N {
                                sums[r] = u8_step(sums[r], weights, broadcast4(row_acts[r], 2 * pair + k));
                            }
                        }
                    }
                    for r in 0..N {
                        dots[r] = _mm256_add_epi32(dots[r], _mm256_mullo_epi32(scale, sums[r]));
                    }
                }
                for r in 0..N {
                    let act = row_acts[r];
                    let low = act.low_sum;
                    let min_dot = _mm256_add_epi32(
                        _mm256_mullo_epi32(mins[0], _mm256_set1_epi32(low)),
                        _mm256_mullo_epi32(mins[1], _mm256_set1_epi32(act.sum - low)),
                    );
                    let offset = _mm256_mul_ps(m, _mm256_mul_ps(_mm256_set1_ps(act.d), _mm256_cvtepi32_ps(min_dot)));
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(act.d));
                    acc[r] = _mm256_add_ps(acc[r], _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dots[r]), offset));
                }
            }
            for r in 0..N {
                _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
            }
        }

        /// Q4_0 (`OFFSET == false`, `m = -8 d`) and Q4_1 (`OFFSET == true`, `m` stored).
        #[target_feature(enable = $features)]
        unsafe fn q4<const OFFSET: bool, const N: usize>(
            _format: QuantFormat,
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
                // Pair `pair` goes to chain `pair % chains` (see `chains`).
                let mut sums = [[q4_start(); N]; 2];
                for pair in 0..4 {
                    let packed = _mm256_loadu_si256(block.add(values_at + 32 * pair) as *const __m256i);
                    let low = _mm256_and_si256(packed, nibble);
                    let high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble);
                    let chain = pair % chains(N);
                    for r in 0..N {
                        let (a_low, a_high) = (broadcast4(row_acts[r], 2 * pair), broadcast4(row_acts[r], 2 * pair + 1));
                        sums[chain][r] = q4_step(sums[chain][r], low, high, a_low, a_high);
                    }
                }
                for r in 0..N {
                    let (first, second) = (q4_sum(sums[0][r]), q4_sum(sums[1][r]));
                    let dot = _mm256_cvtepi32_ps(if chains(N) == 2 { _mm256_add_epi32(first, second) } else { first });
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
            _format: QuantFormat,
            group: &[u8],
            n_blocks: usize,
            acts: &[Q8Block],
            out: &mut [[f32; LANES]; TILE],
        ) {
            let (block_bytes, values_at) = (QuantFormat::Q8_0.group_block_bytes(), QuantFormat::Q8_0.values_offset());
            let mut acc = [_mm256_setzero_ps(); N];
            for b in 0..n_blocks {
                let block = group.as_ptr().add(b * block_bytes);
                let d = load_f16x8(block);
                let row_acts: [&Q8Block; N] = std::array::from_fn(|r| &acts[r * n_blocks + b]);
                let mut sums: [__m256i; N] = std::array::from_fn(|r| q8_start(row_acts[r]));
                for v in 0..8 {
                    let weights = _mm256_loadu_si256(block.add(values_at + 32 * v) as *const __m256i);
                    let prepared = q8_weights(weights);
                    for r in 0..N {
                        sums[r] = q8_step(sums[r], prepared, weights, broadcast4(row_acts[r], v));
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
    };
}

/// The portable merges of a nibble and its high bits (`group_kernels!`'s `merge_bit` and
/// `merge_crumb`): shift the bits into place, mask, OR.
macro_rules! merges_by_shifts {
    ($features:literal) => {
        /// `nibbles`' low nibble (its bits 4-7 are dropped) with bit `v` of each byte of the
        /// bit plane `bits` as bit 4: a 5-bit value of Q5_0, Q5_1 or Q5_K.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn merge_bit(nibbles: __m256i, bits: __m256i, v: usize) -> __m256i {
            _mm256_or_si256(_mm256_and_si256(nibbles, _mm256_set1_epi8(0x0f)), bit_at::<4>(bits, v))
        }

        /// `nibbles`' low nibble with bits `2j`, `2j + 1` of each byte of `crumbs` as bits 4
        /// and 5: a stored 6-bit value of Q6_K.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn merge_crumb(nibbles: __m256i, crumbs: __m256i, j: usize) -> __m256i {
            _mm256_or_si256(_mm256_and_si256(nibbles, _mm256_set1_epi8(0x0f)), crumb_at::<4>(crumbs, j))
        }
    };
}

/// `merge_bit` and `merge_crumb` with GFNI and AVX-512VL: one `vgf2p8affineqb` moves the wanted
/// bits of every byte into place and clears the rest (a bit matrix per 64-bit lane), one
/// `vpternlogd` masks the nibble and merges, where the shifts take a shift, a mask and the
/// merge per vector. Same bits: both compute the same bytes.
macro_rules! merges_by_gfni {
    ($features:literal) => {
        /// The 8×8 bit matrix of `vgf2p8affineqb` that moves input bit `from` of every byte to
        /// output bit `to` (byte `7 - to` of the matrix is the mask of the input bits whose
        /// parity gives output bit `to`).
        const fn move_bit(from: usize, to: usize) -> i64 {
            ((1u64 << from) << (8 * (7 - to))) as i64
        }

        /// `vpternlogd`'s truth table for `(a & c) | b`: `a` the nibbles, `b` the moved bits
        /// (nothing outside bits 4-5), `c` the nibble mask.
        const NIBBLE_OR_MOVED: i32 = (0xf0 & 0xaa) | 0xcc;

        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn merge_bit(nibbles: __m256i, bits: __m256i, v: usize) -> __m256i {
            let moved = _mm256_gf2p8affine_epi64_epi8::<0>(bits, _mm256_set1_epi64x(move_bit(v, 4)));
            _mm256_ternarylogic_epi32::<NIBBLE_OR_MOVED>(nibbles, moved, _mm256_set1_epi8(0x0f))
        }

        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn merge_crumb(nibbles: __m256i, crumbs: __m256i, j: usize) -> __m256i {
            let matrix = move_bit(2 * j, 4) | move_bit(2 * j + 1, 5);
            let moved = _mm256_gf2p8affine_epi64_epi8::<0>(crumbs, _mm256_set1_epi64x(matrix));
            _mm256_ternarylogic_epi32::<NIBBLE_OR_MOVED>(nibbles, moved, _mm256_set1_epi8(0x0f))
        }
    };
}
