//! Kernel tests against a float64 reference written straight from the ggml block layouts.

use super::*;

const TYPES: [GgmlType; 15] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::IQ4NL,
    GgmlType::IQ4XS,
];

/// The block-quantized types of [`TYPES`].
fn quantized_types() -> impl Iterator<Item = GgmlType> {
    TYPES.into_iter().filter(|ty| !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16))
}

/// Byte offsets of the f16 scales within a ggml block (the rest of a block is any bytes).
fn f16_scale_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
        _ => &[0],
    }
}
const ROWS: usize = 13;
/// Two K-quant super-blocks per row, so their per-super-block scales are told apart.
const COLS: usize = 512;
const MAX_M: usize = 64;

/// xorshift64*: deterministic test data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }

    /// Uniform in [-1, 1).
    fn signed_unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// f16 bits of a value with magnitude in [2^-8, 2^-2) and a random sign.
    fn f16_scale(&mut self) -> [u8; 2] {
        let exponent = 7 + self.next() % 6;
        let bits = ((self.next() & 1) << 15) as u16 | (exponent << 10) as u16 | (self.next() & 0x3ff) as u16;
        bits.to_le_bytes()
    }
}

fn kernels() -> Vec<Kernel> {
    Kernel::available()
}

fn random_weight_bytes(ty: GgmlType, rng: &mut Rng) -> Vec<u8> {
    let n = ROWS * COLS;
    let mut bytes = Vec::new();
    match ty {
        GgmlType::F32 => (0..n).for_each(|_| bytes.extend(rng.signed_unit().to_le_bytes())),
        GgmlType::F16 => (0..n).for_each(|_| bytes.extend(rng.f16_scale())),
        // A finite f32's top half, sign and all.
        GgmlType::BF16 => (0..n).for_each(|_| bytes.extend(((rng.signed_unit().to_bits() >> 16) as u16).to_le_bytes())),
        _ => {
            let (block_values, block_bytes) = ty.block_layout();
            for _ in 0..n / block_values {
                let start = bytes.len();
                bytes.extend((0..block_bytes).map(|_| rng.byte()));
                for &at in f16_scale_offsets(ty) {
                    bytes[start + at..][..2].copy_from_slice(&rng.f16_scale());
                }
            }
        }
    }
    bytes
}

/// Dequantizes ggml data in f64, independently of the code under test (only `f16_to_f32`,
/// tested on its own, is shared).
fn reference_weights(ty: GgmlType, bytes: &[u8]) -> Vec<f64> {
    let f16 = |b: &[u8]| f16_to_f32(u16::from_le_bytes([b[0], b[1]])) as f64;
    match ty {
        GgmlType::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect(),
        GgmlType::F16 => bytes.chunks_exact(2).map(f16).collect(),
        GgmlType::Q8_0 => {
            bytes.chunks_exact(34).flat_map(|b| b[2..].iter().map(move |&q| q as i8 as f64 * f16(b))).collect()
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (_, block_bytes) = ty.block_layout();
            bytes
                .chunks_exact(block_bytes)
                .flat_map(|b| {
                    let (d, m, nibbles) = if ty == GgmlType::Q4_0 {
                        (f16(b), -8.0 * f16(b), &b[2..])
                    } else {
                        (f16(b), f16(&b[2..]), &b[4..])
                    };
                    let low = nibbles.iter().map(move |&q| (q & 15) as f64 * d + m);
                    let high = nibbles.iter().map(move |&q| (q >> 4) as f64 * d + m);
                    low.chain(high).collect::<Vec<_>>()
                })
                .collect()
        }
        // Our dequantizer, held bit for bit to gguf-py's by `dequantized_rows_equal_gguf_py`.
        other => {
            let (rows, cols) = (bytes.len() / (COLS / other.block_layout().0 * other.block_layout().1), COLS);
            let matrix = QMatrix::from_bytes(other, rows, cols, bytes).unwrap();
            let mut row = vec![0f32; cols];
            (0..rows)
                .flat_map(|i| {
                    matrix.dequantize_row(i, &mut row);
                    row.iter().map(|&v| v as f64).collect::<Vec<_>>()
                })
                .collect()
        }
    }
}

fn random_activations(rng: &mut Rng) -> Vec<f32> {
    // Mostly small values with occasional outliers, like real hidden states.
    (0..MAX_M * COLS).map(|i| rng.signed_unit() * if i % 37 == 0 { 8.0 } else { 1.0 }).collect()
}

/// The activations as the integer kernels see them (quantized, then widened to f64), and
/// each value's worst-case quantization error (half a step).
fn quantized_reference_activations(x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let mut blocks = vec![Q8Block::default(); x.len() / BLOCK];
    quantize_row(x, &mut blocks);
    let values = blocks.iter().flat_map(|b| b.q.iter().map(move |&q| b.d as f64 * q as f64)).collect();
    let half_steps = blocks.iter().flat_map(|b| [b.d as f64 / 2.0; BLOCK]).collect();
    (values, half_steps)
}

fn matrix(ty: GgmlType, seed: u64) -> (QMatrix, Vec<f64>) {
    let bytes = random_weight_bytes(ty, &mut Rng(seed));
    let m = QMatrix::from_bytes(ty, ROWS, COLS, &bytes).unwrap();
    (m, reference_weights(ty, &bytes))
}

#[test]
fn kernels_match_f64_reference_for_every_type_and_batch_size() {
    let pool = ThreadPool::new(2).expect("start the thread pool");
    let x = random_activations(&mut Rng(7));
    for (t, ty) in TYPES.into_iter().enumerate() {
        let (matrix, weights) = matrix(ty, 100 + t as u64);
        for kernel in kernels() {
            for m in 1..=MAX_M {
                let mut out = vec![f32::NAN; m * ROWS];
                matrix.matmul_using(kernel, &x[..m * COLS], m, &mut out, &pool);
                for r in 0..m {
                    let x_row = &x[r * COLS..][..COLS];
                    let (quantized, half_steps) = quantized_reference_activations(x_row);
                    for i in 0..ROWS {
                        let w_row = &weights[i * COLS..][..COLS];
                        let got = out[r * ROWS + i] as f64;
                        let exact: f64 = w_row.iter().zip(x_row).map(|(w, &a)| w * a as f64).sum();
                        let magnitude: f64 = w_row.iter().zip(x_row).map(|(w, &a)| w.abs() * a.abs() as f64).sum();
                        let context = format!("{ty:?} {kernel:?} m={m} row {r} output {i}");
                        if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
                            assert!((got - exact).abs() <= 1e-6 * magnitude, "{context}: {got} vs {exact}");
                            continue;
                        }
                        // Against the activations the kernel saw: only f32 rounding may differ.
                        let want: f64 = w_row.iter().zip(&quantized).map(|(w, a)| w * a).sum();
                        let offsets: f64 = weights_offset_magnitude(ty, w_row, &quantized);
                        assert!((got - want).abs() <= 1e-6 * (magnitude + offsets), "{context}: {got} vs {want}");
                        // Against the raw activations: within the 8-bit quantization error.
                        let bound: f64 = w_row.iter().zip(&half_steps).map(|(w, h)| w.abs() * h).sum();
                        assert!(
                            (got - exact).abs() <= bound * 1.001 + 1e-6 * magnitude,
                            "{context}: {got} vs exact {exact}"
                        );
                    }
                }
            }
        }
    }
}

/// Q4 kernels add `m · Σ a` per block separately, so their rounding scales with |m| Σ|a|, which
/// can exceed Σ|w a| when weights sit near zero: an upper bound for that term.
fn weights_offset_magnitude(ty: GgmlType, w_row: &[f64], activations: &[f64]) -> f64 {
    if matches!(ty, GgmlType::Q8_0 | GgmlType::Q6K | GgmlType::Q3K | GgmlType::IQ4NL | GgmlType::IQ4XS) {
        return 0.0;
    }
    w_row
        .chunks_exact(BLOCK)
        .zip(activations.chunks_exact(BLOCK))
        .map(|(w, a)| {
            let largest = w.iter().fold(0f64, |acc, v| acc.max(v.abs()));
            2.0 * largest * a.iter().map(|v| v.abs()).sum::<f64>()
        })
        .sum()
}

#[test]
fn results_are_bitwise_batch_invariant() {
    let pool = ThreadPool::new(2).expect("start the thread pool");
    let x = random_activations(&mut Rng(11));
    for (t, ty) in TYPES.into_iter().enumerate() {
        let (matrix, _) = matrix(ty, 200 + t as u64);
        for kernel in kernels() {
            let mut full = vec![0f32; MAX_M * ROWS];
            matrix.matmul_using(kernel, &x, MAX_M, &mut full, &pool);
            // Every batch size, with each row at a different index than in the full batch.
            for m in 1..=MAX_M {
                let first = MAX_M - m;
                let mut out = vec![0f32; m * ROWS];
                matrix.matmul_using(kernel, &x[first * COLS..], m, &mut out, &pool);
                for r in 0..m {
                    let alone = out[r * ROWS..][..ROWS].iter().map(|v| v.to_bits());
                    let batched = full[(first + r) * ROWS..][..ROWS].iter().map(|v| v.to_bits());
                    assert!(alone.eq(batched), "{ty:?} {kernel:?}: row {} differs in a batch of {m}", first + r);
                }
            }
        }
    }
}

#[test]
fn dequantize_row_matches_reference() {
    for (t, ty) in TYPES.into_iter().enumerate() {
        let (matrix, weights) = matrix(ty, 300 + t as u64);
        let mut row = vec![0f32; COLS];
        for i in 0..ROWS {
            matrix.dequantize_row(i, &mut row);
            for (got, want) in row.iter().zip(&weights[i * COLS..][..COLS]) {
                assert!((*got as f64 - want).abs() <= want.abs() * 1e-7, "{ty:?} row {i}: {got} vs {want}");
            }
        }
    }
}

#[test]
fn concat_rows_equals_separate_matmuls() {
    let pool = ThreadPool::new(2).expect("start the thread pool");
    let x = random_activations(&mut Rng(5));
    let m = 5;
    // 13 rows: groups of eight straddle the parts (regrouped); 16 rows: whole groups (appended).
    for rows in [13usize, 16] {
        let part = |seed| {
            let bytes: Vec<u8> = (0..rows.div_ceil(ROWS))
                .flat_map(|i| random_weight_bytes(GgmlType::Q4_1, &mut Rng(seed + i as u64)))
                .collect();
            QMatrix::from_bytes(GgmlType::Q4_1, rows, COLS, &bytes[..rows * COLS / BLOCK * 20]).unwrap()
        };
        let (a, b, c) = (part(1), part(2), part(3));
        let stacked = QMatrix::concat_rows(&[a.clone(), b.clone(), c.clone()]).unwrap();
        assert_eq!((stacked.rows(), stacked.cols()), (3 * rows, COLS));
        let mut out = vec![0f32; m * 3 * rows];
        stacked.matmul(&x[..m * COLS], m, &mut out, &pool);
        for (i, part) in [a, b, c].iter().enumerate() {
            let mut alone = vec![0f32; m * rows];
            part.matmul(&x[..m * COLS], m, &mut alone, &pool);
            for r in 0..m {
                assert_eq!(out[r * 3 * rows + i * rows..][..rows], alone[r * rows..][..rows], "{rows} rows, part {i}");
            }
        }
    }
    let (a, _) = matrix(GgmlType::Q4_1, 1);
    let (q8, _) = matrix(GgmlType::Q8_0, 3);
    assert!(QMatrix::concat_rows(&[a, q8]).is_none(), "formats differ");
}

#[test]
fn activations_quantized_on_the_pool_equal_row_by_row_quantization() {
    let pool = ThreadPool::new(2).expect("start the thread pool");
    let x = random_activations(&mut Rng(17));
    let n_blocks = COLS / BLOCK;
    for m in [1, PARALLEL_QUANTIZE_ROWS - 1, PARALLEL_QUANTIZE_ROWS, PARALLEL_QUANTIZE_ROWS + 1, 37, MAX_M] {
        let mut acts = Vec::new();
        quantize_activations(Kernel::Scalar, &x[..m * COLS], COLS, m, &mut acts, &pool);
        assert_eq!(acts.len(), m * n_blocks);
        for (r, row) in acts.chunks_exact(n_blocks).enumerate() {
            let mut alone = vec![Q8Block::default(); n_blocks];
            quantize_row(&x[r * COLS..][..COLS], &mut alone);
            let same = row.iter().zip(&alone).all(|(a, b)| {
                a.q == b.q && a.sum == b.sum && a.d.to_bits() == b.d.to_bits() && a.s.to_bits() == b.s.to_bits()
            });
            assert!(same, "row {r} of {m}");
        }
    }
}

#[test]
fn matmul_each_equals_each_part_alone() {
    let pool = ThreadPool::new(2).expect("start the thread pool");
    let x = random_activations(&mut Rng(23));
    // Quantized parts of different formats beside a float one, as stacked projections mix them.
    let parts: Vec<QMatrix> =
        [GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::F32, GgmlType::Q6K].iter().map(|&ty| matrix(ty, 40).0).collect();
    for m in [1, 3, PARALLEL_QUANTIZE_ROWS + 3, MAX_M] {
        let mut buffer = Vec::new();
        let mut seen = Vec::new();
        QMatrix::matmul_each(&parts, &x[..m * COLS], None, m, &mut buffer, &pool, |i, out| {
            let mut alone = vec![0f32; m * parts[i].rows()];
            parts[i].matmul(&x[..m * COLS], m, &mut alone, &pool);
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(out), bits(&alone), "part {i}, {m} rows");
            seen.push(i);
        });
        assert_eq!(seen, [0, 1, 2, 3], "every part once, in order");
    }
}

/// `m` rows of `x` quantized row by row, as the row-wise passes of a step do before
/// [`QMatrix::matmul_prequantized`].
fn rows_quantized(x: &[f32], m: usize) -> Vec<Q8Block> {
    let mut blocks = vec![Q8Block::default(); m * COLS / BLOCK];
    for (row, out) in x[..m * COLS].chunks_exact(COLS).zip(blocks.chunks_exact_mut(COLS / BLOCK)) {
        quantize_row(row, out);
    }
    blocks
}

#[test]
fn matmul_over_prequantized_rows_equals_matmul_bit_for_bit() {
    let pool = ThreadPool::new(2).expect("start the thread pool");
    let x = random_activations(&mut Rng(29));
    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let types = quantized_types().chain([GgmlType::F32, GgmlType::F16]);
    for (t, ty) in types.enumerate() {
        let (matrix, _) = matrix(ty, 40 + t as u64);
        for m in [1, 3, PARALLEL_QUANTIZE_ROWS - 1, PARALLEL_QUANTIZE_ROWS, 33, MAX_M] {
            let quantized = rows_quantized(&x, m);
            let (mut expected, mut got) = (vec![0f32; m * ROWS], vec![f32::NAN; m * ROWS]);
            matrix.matmul(&x[..m * COLS], m, &mut expected, &pool);
            matrix.matmul_prequantized(&x[..m * COLS], &quantized, m, &mut got, &pool);
            assert_eq!(bits(&got), bits(&expected), "{ty:?}, {m} rows");
        }
    }
    // Stacked parts of different types take the same rows once for all parts.
    let parts: Vec<QMatrix> =
        [GgmlType::Q4K, GgmlType::Q6K, GgmlType::F32].iter().map(|&ty| matrix(ty, 41).0).collect();
    for m in [1, PARALLEL_QUANTIZE_ROWS + 1, MAX_M] {
        let quantized = rows_quantized(&x, m);
        let mut outputs = [Vec::new(), Vec::new()];
        for (pre, outputs) in [None, Some(&quantized[..])].into_iter().zip(&mut outputs) {
            QMatrix::matmul_each(&parts, &x[..m * COLS], pre, m, &mut Vec::new(), &pool, |_, out| {
                outputs.extend(bits(out))
            });
        }
        assert_eq!(outputs[1], outputs[0], "stacked parts, {m} rows");
    }
}

/// The pre-quantized blocks are what the matmul reads, on every kernel `m` picks (AMX from
/// `AMX_MIN_ROWS` rows, whole tiles of rows or not): given `x` that quantizes differently, the
/// result is still that of the rows the blocks came from. A kernel that quantized `x` again
/// (as AMX did for every pre-quantized matmul) fails here.
#[test]
fn matmul_prequantized_reads_the_given_blocks_not_x_again() {
    let pool = ThreadPool::new(2).expect("start the thread pool");
    let x = random_activations(&mut Rng(31));
    let other_x: Vec<f32> = x.iter().map(|v| -2.0 * v).collect();
    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for (t, ty) in quantized_types().enumerate() {
        let (matrix, _) = matrix(ty, 60 + t as u64);
        for m in [1, AMX_MIN_ROWS, 16, 20, 32, 33, MAX_M] {
            let quantized = rows_quantized(&x, m);
            let (mut expected, mut got) = (vec![0f32; m * ROWS], vec![f32::NAN; m * ROWS]);
            matrix.matmul(&x[..m * COLS], m, &mut expected, &pool);
            matrix.matmul_prequantized(&other_x[..m * COLS], &quantized, m, &mut got, &pool);
            assert_eq!(bits(&got), bits(&expected), "{ty:?}, {m} rows");
            // Stacked parts (a float part among them would read `x`: none here).
            let mut stacked = Vec::new();
            let parts = [matrix.clone()];
            QMatrix::matmul_each(&parts, &other_x[..m * COLS], Some(&quantized), m, &mut Vec::new(), &pool, |_, out| {
                stacked.extend(bits(out))
            });
            assert_eq!(stacked, bits(&expected), "{ty:?}, {m} rows, stacked");
        }
    }
}

#[test]
fn interleaving_round_trips_every_row() {
    for (t, ty) in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0].into_iter().enumerate() {
        let bytes = random_weight_bytes(ty, &mut Rng(400 + t as u64));
        let m = QMatrix::from_bytes(ty, ROWS, COLS, &bytes).unwrap();
        let Storage::Quantized { format, blocks } = &m.storage else { panic!("{ty:?} is quantized") };
        let row_bytes = bytes.len() / ROWS;
        for row in 0..ROWS {
            let back = interleaved::ggml_row(*format, blocks, COLS / BLOCK, row);
            assert_eq!(back, bytes[row * row_bytes..][..row_bytes], "{ty:?} row {row}");
        }
    }
}

#[test]
fn unsupported_type_is_named() {
    let err = QMatrix::from_bytes(GgmlType::Q8K, 1, 256, &[0u8; 292]).unwrap_err();
    assert!(err.contains("Q8_K") && err.contains("unsupported"), "{err}");
}

#[test]
fn wrong_byte_count_is_an_error() {
    let err = QMatrix::from_bytes(GgmlType::Q4_1, 2, 64, &[0u8; 60]).unwrap_err();
    assert!(err.contains("do not hold"), "{err}");
}

#[test]
fn simd_kernels_give_identical_bits() {
    // Every SIMD kernel takes exact integer block sums and then the same float operations, so
    // a model computes the same logits on an AVX2 machine and on a VNNI one.
    let pool = ThreadPool::new(2).expect("start the thread pool");
    let x = random_activations(&mut Rng(13));
    // The portable kernel too: it states what the SIMD ones compute, fused multiply-adds and all.
    let simd: Vec<Kernel> = kernels();
    for (t, ty) in quantized_types().enumerate() {
        // 13 rows: one pair of 8-row groups, the second partial; 39 rows: an odd group count,
        // so the last pair of the AMX kernel and of the 512-bit Q8_0 kernel (`vnni512`, under
        // `Avx512Vnni`) has one group.
        let (small, _) = matrix(ty, 500 + t as u64);
        let parts: Vec<QMatrix> = (0..3).map(|i| matrix(ty, 510 + 3 * t as u64 + i).0).collect();
        let large = QMatrix::concat_rows(&parts).expect("same format");
        for matrix in [small, large] {
            let rows = matrix.rows();
            let results: Vec<Vec<u32>> = simd
                .iter()
                .map(|&kernel| {
                    let mut out = vec![0f32; MAX_M * rows];
                    matrix.matmul_using(kernel, &x, MAX_M, &mut out, &pool);
                    out.iter().map(|v| v.to_bits()).collect()
                })
                .collect();
            for (kernel, result) in simd.iter().zip(&results).skip(1) {
                assert!(*result == results[0], "{ty:?} {rows} rows: {kernel:?} differs from {:?}", simd[0]);
            }
            // Every batch size and odd row counts: each batch's rows equal the full batch's
            // (under `Avx512Vnni` this also holds the 256-bit kernels, below
            // `vnni512::MIN_ROWS`, to the 512-bit pairs the full batch of 64 takes).
            for (kernel, full) in simd.iter().zip(&results) {
                for m in [1, 2, 3, 5, 7, 9, 17, 31, 33, 63] {
                    let mut out = vec![0f32; m * rows];
                    matrix.matmul_using(*kernel, &x[..m * COLS], m, &mut out, &pool);
                    let bits: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
                    assert!(bits == full[..m * rows], "{ty:?} {rows} rows: {kernel:?} batch of {m}");
                }
            }
        }
    }
}

/// The AMX loop against the VNNI kernel it must equal bit for bit, over the shapes its loop
/// treats apart: 1 and 2 blocks (fewer than the ring's depth: only draining rounds), 5 and 48
/// blocks; 8 weight rows (one group: the pair's second is absent), 24 (an odd group count) and
/// 40; batches of one and of several activation tiles, whole, half and partial (the epilogue
/// skips the padding rows of a last tile with at most 8 live rows).
#[cfg(target_arch = "x86_64")]
#[test]
fn amx_loop_equals_vnni_over_tile_and_block_counts() {
    if !Kernel::available().contains(&Kernel::Amx) {
        eprintln!("skipped: no AMX on this CPU");
        return;
    }
    let pool = ThreadPool::new(2).expect("start the thread pool");
    let mut rng = Rng(29);
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
        let (block_values, block_bytes) = ty.block_layout();
        for cols in [32, 64, 160, 1536] {
            let x: Vec<f32> = (0..64 * cols).map(|i| rng.signed_unit() * if i % 37 == 0 { 8.0 } else { 1.0 }).collect();
            for rows in [8, 24, 40] {
                let mut bytes = Vec::new();
                for _ in 0..rows * cols / block_values {
                    let start = bytes.len();
                    bytes.extend((0..block_bytes).map(|_| rng.byte()));
                    for &at in f16_scale_offsets(ty) {
                        bytes[start + at..][..2].copy_from_slice(&rng.f16_scale());
                    }
                }
                let matrix = QMatrix::from_bytes(ty, rows, cols, &bytes).unwrap();
                for m in [8, 9, 16, 17, 24, 25, 32, 33, 64] {
                    let [amx, vnni] = [Kernel::Amx, Kernel::best()].map(|kernel| {
                        let mut out = vec![f32::NAN; m * rows];
                        matrix.matmul_using(kernel, &x[..m * cols], m, &mut out, &pool);
                        out.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
                    });
                    assert!(amx == vnni, "{ty:?} {rows}×{cols}, batch of {m}: AMX differs from {:?}", Kernel::best());
                }
            }
        }
    }
}

/// `Kernel::Avx512Vnni` runs one of two builds of the 256-bit kernels, with GFNI's bit merges
/// or with shifts, whichever the CPU allows ([`vnni::avx512`]); the tests above only see the
/// one this CPU takes. This holds both (where the CPU runs them) to the portable kernel, group
/// by group, for every format and tile height.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx512_vnni_builds_with_and_without_gfni_give_identical_bits() {
    type GroupTile = unsafe fn(QuantFormat, &[u8], usize, &[Q8Block], &mut [[f32; LANES]; TILE]);
    let mut builds: Vec<(&str, GroupTile)> = Vec::new();
    if vnni::avx512_shifts::is_available() {
        builds.push(("shifts", vnni::avx512_shifts::group_tile));
    }
    if vnni::avx512_gfni::is_available() {
        builds.push(("gfni", vnni::avx512_gfni::group_tile));
    }
    if builds.is_empty() {
        eprintln!("skipped: no AVX512-VNNI on this CPU");
        return;
    }
    let n_blocks = COLS / BLOCK;
    let x = random_activations(&mut Rng(17));
    let mut acts = vec![Q8Block::default(); TILE * n_blocks];
    quantize_row(&x[..TILE * COLS], &mut acts);
    for (t, ty) in quantized_types().enumerate() {
        let (matrix, _) = matrix(ty, 700 + t as u64);
        let Storage::Quantized { format, blocks } = &matrix.storage else { unreachable!("{ty:?} is quantized") };
        for group in blocks.chunks_exact(format.group_bytes(n_blocks)) {
            for n in 1..=TILE {
                let tile_acts = &acts[..n * n_blocks];
                let mut expected = [[0f32; LANES]; TILE];
                scalar::group_tile(*format, group, n_blocks, tile_acts, &mut expected);
                for (name, group_tile) in &builds {
                    let mut got = [[0f32; LANES]; TILE];
                    // SAFETY: each build is listed only if its `is_available()` said yes.
                    unsafe { group_tile(*format, group, n_blocks, tile_acts, &mut got) };
                    let bits =
                        |rows: &[[f32; LANES]]| -> Vec<u32> { rows.iter().flatten().map(|v| v.to_bits()).collect() };
                    assert!(bits(&got[..n]) == bits(&expected[..n]), "{ty:?}, {n} rows: the {name} build differs");
                }
            }
        }
    }
}

/// Our dequantized rows against `gguf.quants.dequantize` on random blocks of every type
/// (fixtures written by `tests/reference/quant_fixtures.py`): equal bit for bit.
#[test]
fn dequantized_rows_equal_gguf_py_bit_for_bit() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/quant");
    let cases = [
        ("Q5_0", GgmlType::Q5_0),
        ("Q5_1", GgmlType::Q5_1),
        ("Q2_K", GgmlType::Q2K),
        ("Q3_K", GgmlType::Q3K),
        ("Q4_K", GgmlType::Q4K),
        ("Q5_K", GgmlType::Q5K),
        ("Q6_K", GgmlType::Q6K),
        ("IQ4_NL", GgmlType::IQ4NL),
        ("IQ4_XS", GgmlType::IQ4XS),
        ("BF16", GgmlType::BF16),
    ];
    for (name, ty) in cases {
        let raw = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
        let want: Vec<u32> = std::fs::read(dir.join(format!("{name}.f32")))
            .unwrap()
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let (rows, cols) = (3, want.len() / 3);
        let matrix = QMatrix::from_bytes(ty, rows, cols, &raw).unwrap();
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            matrix.dequantize_row(r, &mut row);
            for (i, (got, want)) in row.iter().zip(&want[r * cols..][..cols]).enumerate() {
                assert_eq!(got.to_bits(), *want, "{name} row {r} value {i}: {got:e} vs {:e}", f32::from_bits(*want));
            }
        }
    }
}

#[test]
fn every_format_survives_concat_across_and_along_groups() {
    let pool = ThreadPool::new(2).expect("start the thread pool");
    let x = random_activations(&mut Rng(21));
    for (t, ty) in quantized_types().enumerate() {
        // 13-row parts: eight-row groups straddle the parts, so rows move between lanes;
        // 16-row parts: whole groups (super-block headers included) are appended.
        for rows in [ROWS, 16] {
            let part = |i: u64| {
                let bytes: Vec<u8> =
                    (0..2).flat_map(|k| random_weight_bytes(ty, &mut Rng(700 + 10 * t as u64 + 2 * i + k))).collect();
                QMatrix::from_bytes(ty, rows, COLS, &bytes[..bytes.len() / (2 * ROWS) * rows]).unwrap()
            };
            let parts: Vec<QMatrix> = (0..3).map(part).collect();
            let stacked = QMatrix::concat_rows(&parts).expect("same format");
            let (mut row, mut part_row) = (vec![0f32; COLS], vec![0f32; COLS]);
            for (p, part) in parts.iter().enumerate() {
                for r in 0..rows {
                    stacked.dequantize_row(p * rows + r, &mut row);
                    part.dequantize_row(r, &mut part_row);
                    assert_eq!(row, part_row, "{ty:?} {rows}-row part {p} row {r}");
                }
            }
            let m = 3;
            let mut out = vec![0f32; m * 3 * rows];
            stacked.matmul(&x[..m * COLS], m, &mut out, &pool);
            for (p, part) in parts.iter().enumerate() {
                let mut alone = vec![0f32; m * rows];
                part.matmul(&x[..m * COLS], m, &mut alone, &pool);
                for r in 0..m {
                    assert_eq!(out[r * 3 * rows + p * rows..][..rows], alone[r * rows..][..rows], "{ty:?} part {p}");
                }
            }
        }
    }
}

/// The Gemma 3 270M Q4_K_M file (Q4_K, Q5_0, Q6_K, Q8_0 and F32 tensors), where the model
/// cache keeps it; `None` (the test says it skipped) when it has not been pulled.
fn gemma3_model() -> Option<std::path::PathBuf> {
    let cache = std::env::var_os("CORTEXSTREAM_CACHE").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/cortexstream")
    });
    Some(cache.join("models/gemma3/gemma-3-270m-q4_k_m.gguf")).filter(|path| path.exists())
}

/// Every tensor of the real file, dequantized row by row, against gguf-py's dequantization of
/// it (checksums from `tests/reference/real_tensor_checksums.py`: any value differing in any
/// bit changes its tensor's checksum).
#[test]
fn real_tensors_dequantize_like_gguf_py() {
    let Some(path) = gemma3_model() else {
        eprintln!("skipped: the gemma3 model is not in the model cache");
        return;
    };
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/quant/gemma-3-270m-q4_k_m.checksums.json");
    let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
    let gguf = GgufFile::open(&path).unwrap();
    assert_eq!(gguf.tensors().len(), expected.as_object().unwrap().len(), "tensor count");
    for info in gguf.tensors() {
        let want = &expected[&info.name];
        let matrix = QMatrix::from_gguf(&gguf, &info.name).unwrap();
        let mut row = vec![0f32; matrix.cols()];
        let (mut checksum, mut index) = (0u64, 0u64);
        for r in 0..matrix.rows() {
            matrix.dequantize_row(r, &mut row);
            for v in &row {
                checksum = checksum.wrapping_add(u64::from(v.to_bits()).wrapping_mul(2 * index + 1));
                index += 1;
            }
        }
        assert_eq!(index, want["values"].as_u64().unwrap(), "{} values", info.name);
        assert_eq!(checksum.to_string(), want["checksum"].as_str().unwrap(), "{} ({})", info.name, want["type"]);
    }
}

/// Resident kilobytes of this process's mappings of `file` (`/proc/self/smaps`) that overlap
/// `bytes`: the map one `GgufFile` holds, not the maps other tests running at the same time
/// make of the same file.
#[cfg(target_os = "linux")]
fn mapped_rss_kib(file: &std::path::Path, bytes: &[u8]) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let name = file.canonicalize().unwrap().to_string_lossy().into_owned();
    let (lo, hi) = (bytes.as_ptr() as usize, bytes.as_ptr() as usize + bytes.len());
    let mut counted = false;
    let mut total = 0;
    for line in smaps.lines() {
        if line.split_whitespace().next().is_some_and(|field| !field.ends_with(':')) {
            // A mapping's header: `start-end perms offset dev inode [path]`.
            let range = line.split_whitespace().next().and_then(|r| r.split_once('-'));
            let (start, end) = range.map_or((0, 0), |(a, b)| {
                (usize::from_str_radix(a, 16).unwrap(), usize::from_str_radix(b, 16).unwrap())
            });
            counted = line.ends_with(&name) && start < hi && lo < end;
        } else if counted && line.starts_with("Rss:") {
            total += line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap();
        }
    }
    total
}

/// Loading a matrix copies it (regrouped), so its pages of the mapped file are released: a
/// model is not resident twice at the peak of its load (Gemma 3 270M's 178 MB Q8_0 embedding
/// would be): loading the 168M-weight table leaves under 1 MiB more of the file resident.
#[cfg(target_os = "linux")]
#[test]
fn loading_a_matrix_releases_its_mapped_pages() {
    let Some(path) = gemma3_model() else {
        eprintln!("skipped: the gemma3 model is not in the model cache");
        return;
    };
    let gguf = GgufFile::open(&path).unwrap();
    let (info, mapped) = gguf.tensor_bytes("token_embd.weight").unwrap();
    let size_kib = info.size as u64 / 1024;
    // The metadata (a 262k-token vocabulary) was read by the parser and stays mapped.
    let before = mapped_rss_kib(&path, mapped);
    let matrix = QMatrix::from_gguf(&gguf, "token_embd.weight").unwrap();
    let grown = mapped_rss_kib(&path, mapped).saturating_sub(before);
    assert!(grown < 1024, "{grown} KiB more of the file mapped after loading a {size_kib} KiB tensor");
    // Still readable through the map (the bytes fault back in), and equal to the copy.
    let (_, bytes) = gguf.tensor_bytes("token_embd.weight").unwrap();
    let again = QMatrix::from_bytes(info.ty, matrix.rows(), matrix.cols(), bytes).unwrap();
    let (mut a, mut b) = (vec![0f32; matrix.cols()], vec![0f32; matrix.cols()]);
    for row in [0, 1234, matrix.rows() - 1] {
        matrix.dequantize_row(row, &mut a);
        again.dequantize_row(row, &mut b);
        assert_eq!(a, b, "row {row}");
    }
}

/// Decode reads every weight once per token, so the regrouped layout must stay close to the
/// file's bits per weight: at most 1.2x (Q2_K's 3.125 vs 2.625 is the largest ratio; the rest
/// are within 3%), and never the 8 bits of a widened 4-bit format.
#[test]
fn quantized_weights_stay_close_to_their_file_size() {
    for (t, ty) in quantized_types().enumerate() {
        let bytes: Vec<u8> = (0..2).flat_map(|k| random_weight_bytes(ty, &mut Rng(900 + 2 * t as u64 + k))).collect();
        let rows = 16; // whole groups: no padding rows
        let file = &bytes[..bytes.len() / (2 * ROWS) * rows];
        let matrix = QMatrix::from_bytes(ty, rows, COLS, file).unwrap();
        let Storage::Quantized { blocks, .. } = &matrix.storage else { panic!("{ty:?} is quantized") };
        let ratio = blocks.len() as f64 / file.len() as f64;
        assert!(ratio <= 1.2, "{ty:?}: {} bytes in memory for {} in the file", blocks.len(), file.len());
    }
}

/// Q6_K blocks at the integer limits of the kernels' half sums: every value stored as 0
/// (weight -32), scales -128 and 127, and activations of magnitude 127, so a half sum `S`
/// reaches 16 · 32 · 127 and `sc0 S0 + sc1 S1` about 2^24 (a kernel narrowing `S` to 16 bits,
/// or scaling it inexactly, shows here, not on random blocks). Every kernel, at a batch that
/// takes the 512-bit pairs and at one that does not, equals the portable one.
#[test]
fn q6k_blocks_at_the_integer_limits_give_identical_bits() {
    const Q6K_ROWS: usize = 32;
    const BLOCK_BYTES: usize = 210;
    let mut bytes = vec![0u8; Q6K_ROWS * COLS / 256 * BLOCK_BYTES];
    for (i, block) in bytes.chunks_exact_mut(BLOCK_BYTES).enumerate() {
        // Scales: all -128, or -128 and 127 alternating halves; d = 1.
        for (j, scale) in block[192..208].iter_mut().enumerate() {
            *scale = if i % 2 == 0 || j % 2 == 0 { 0x80 } else { 0x7f };
        }
        block[208..210].copy_from_slice(&0x3c00u16.to_le_bytes());
    }
    let matrix = QMatrix::from_bytes(GgmlType::Q6K, Q6K_ROWS, COLS, &bytes).unwrap();
    // Activation rows: all -1 (each half sum -127 * 16), or -1 and +1 in alternating halves.
    let x: Vec<f32> =
        (0..MAX_M * COLS).map(|i| if (i / COLS).is_multiple_of(2) || (i % 32) < 16 { -1.0 } else { 1.0 }).collect();
    let pool = ThreadPool::new(2).expect("start the thread pool");
    for m in [MAX_M, 1] {
        let results: Vec<Vec<u32>> = kernels()
            .iter()
            .map(|&kernel| {
                let mut out = vec![0f32; m * Q6K_ROWS];
                matrix.matmul_using(kernel, &x[..m * COLS], m, &mut out, &pool);
                out.iter().map(|v| v.to_bits()).collect()
            })
            .collect();
        for (kernel, result) in kernels().iter().zip(&results).skip(1) {
            assert!(*result == results[0], "batch of {m}: {kernel:?} differs from {:?}", kernels()[0]);
        }
        // Weight row 0 (first super-block's scales all -128, the second's -128 and 127 in
        // turn; every weight -32 times its scale) times activation row 0 (all -1).
        let want = -(256.0 * 4096.0 + 128.0 * 4096.0 - 128.0 * 4064.0);
        let first = f32::from_bits(results[0][0]);
        assert!((first / want - 1.0).abs() < 1e-5, "batch of {m}: {first}, want about {want}");
    }
}

/// Bytes of one `COLS`-wide row of `ty`.
fn row_bytes(ty: GgmlType) -> usize {
    let (block_values, block_bytes) = ty.block_layout();
    COLS / block_values * block_bytes
}

/// A `rows`-row matrix of `ty` whose row `r` is row `pick(r)` of a random [`ROWS`]-row
/// pattern; the pattern rows in `nan_rows` get a NaN scale (all their outputs NaN).
fn patterned_matrix(
    ty: GgmlType,
    seed: u64,
    rows: usize,
    pick: impl Fn(usize) -> usize,
    nan_rows: &[usize],
) -> QMatrix {
    let mut pattern = random_weight_bytes(ty, &mut Rng(seed));
    let (row_len, block_bytes) = (row_bytes(ty), ty.block_layout().1);
    for &p in nan_rows {
        for block in pattern[p * row_len..(p + 1) * row_len].chunks_exact_mut(block_bytes) {
            block[f16_scale_offsets(ty)[0]..][..2].copy_from_slice(&0x7e00u16.to_le_bytes());
        }
    }
    let bytes: Vec<u8> = (0..rows).flat_map(|r| pattern[pick(r) * row_len..][..row_len].to_vec()).collect();
    QMatrix::from_bytes(ty, rows, COLS, &bytes).unwrap()
}

/// `matmul_argmax_rows` against `matmul` then `sampling::argmax`: the same index for every
/// argmax row, the same bits for every other row. Returns the full outputs.
fn assert_fused_argmax_is_argmax_of_matmul(
    matrix: &QMatrix,
    x: &[f32],
    flags: &[bool],
    pool: &ThreadPool,
    what: &str,
) -> Vec<f32> {
    let (m, rows) = (flags.len(), matrix.rows());
    let mut full = vec![0f32; m * rows];
    matrix.matmul(&x[..m * COLS], m, &mut full, pool);
    let (mut out, mut argmax) = (vec![1.0; 3], vec![7; 2]);
    matrix.matmul_argmax_rows(&x[..m * COLS], m, flags, &mut out, &mut argmax, pool);
    let row = |r: usize| &full[r * rows..(r + 1) * rows];
    let expected: Vec<u32> = (0..m).filter(|&r| flags[r]).map(|r| crate::sampling::argmax(row(r))).collect();
    assert_eq!(argmax, expected, "{what}: argmax rows");
    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let kept: Vec<f32> = (0..m).filter(|&r| !flags[r]).flat_map(|r| row(r).to_vec()).collect();
    assert_eq!(bits(&out), bits(&kept), "{what}: the rows that want their values");
    full
}

/// Flags of `m` rows: all argmax, none, and mixed.
fn argmax_flag_sets(m: usize) -> [Vec<bool>; 3] {
    [vec![true; m], vec![false; m], (0..m).map(|r| r % 3 != 1).collect()]
}

#[test]
fn fused_argmax_picks_what_argmax_picks_from_the_full_matmul() {
    // Rows spanning several tasks, an odd number of groups, the last one partial (the last
    // pair's lanes are past the matrix, its second group absent); below and above the pair
    // kernels' `vnni512::MIN_ROWS` (8; 8 itself included) and, on AMX CPUs, AMX's thresholds
    // (Q4_1 from 8 rows, Q8_0 from 16: both fold AMX results here); float weights take the
    // unfused path.
    let rows: usize = 1536 + 8 * 4 + 3;
    #[cfg(target_arch = "x86_64")]
    if amx::is_available() {
        let amx_for = |format, m| Kernel::for_rows(m).for_format(format, m) == Kernel::Amx;
        assert!(amx_for(QuantFormat::Q8_0, 16) && amx_for(QuantFormat::Q4_1, 8), "the AMX fold is tested");
    }
    let x = random_activations(&mut Rng(31));
    for threads in [1, 2, 3] {
        let pool = ThreadPool::new(threads).expect("start the thread pool");
        for ty in [GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q4_1, GgmlType::Q6K, GgmlType::F32] {
            let bytes: Vec<u8> =
                (0..rows.div_ceil(ROWS)).flat_map(|i| random_weight_bytes(ty, &mut Rng(100 + i as u64))).collect();
            let matrix = QMatrix::from_bytes(ty, rows, COLS, &bytes[..rows * row_bytes(ty)]).unwrap();
            for m in [1, 3, 8, 16, 33] {
                for flags in argmax_flag_sets(m) {
                    let what = format!("{ty:?}, {m} rows, {threads} threads, {flags:?}");
                    assert_fused_argmax_is_argmax_of_matmul(&matrix, &x, &flags, &pool, &what);
                }
            }
        }
    }
}

#[test]
fn fused_argmax_breaks_ties_low_and_never_picks_nan() {
    let rows: usize = 1024 + 61;
    let x = random_activations(&mut Rng(37));
    let pool = ThreadPool::new(2).expect("start the thread pool");
    // 17 rows: AMX for Q8_0 and Q4_1 where the CPU has it.
    for ty in [GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::Q4K] {
        // Seven pattern rows repeated from an offset: each activation row's maximum first shows
        // within the first seven rows and ties every seventh row after it, across lanes and
        // tasks. Pattern rows 0 and 1 are NaN (every output NaN), so NaN sits beside the ties.
        let matrix = patterned_matrix(ty, 41, rows, |r| (r * 3 + 5) % 7, &[0, 1]);
        for m in [2, 17] {
            for flags in argmax_flag_sets(m) {
                let what = format!("ties, {ty:?}, {m} rows, {flags:?}");
                let full = assert_fused_argmax_is_argmax_of_matmul(&matrix, &x, &flags, &pool, &what);
                for r in 0..m {
                    let row = &full[r * rows..(r + 1) * rows];
                    let best = crate::sampling::argmax(row) as usize;
                    assert!(best < 7 && !row[best].is_nan(), "{what}: row {r} picked {best}");
                    assert!(row[best + 7] == row[best], "{what}: row {r}'s maximum is tied");
                }
            }
        }
        // Every output NaN: index 0, as `argmax` gives.
        let all_nan = patterned_matrix(ty, 43, rows, |r| r % 2, &[0, 1]);
        for flags in argmax_flag_sets(17) {
            assert_fused_argmax_is_argmax_of_matmul(&all_nan, &x, &flags, &pool, &format!("all NaN, {ty:?}"));
        }
    }
}

/// The pair kernels prefetch the next pair a share per tile and each tile's share a share per
/// block: the shares must cover every byte exactly once, in order, cut at cache lines, for
/// any count (more shares than lines included), or some weights would be fetched late.
#[cfg(target_arch = "x86_64")]
#[test]
fn prefetch_shares_cover_every_byte_once_in_whole_lines() {
    let bytes = vec![0u8; 64 * 37 + 11];
    for len in [0, 1, 64, 65, 64 * 37, bytes.len()] {
        for count in [1, 2, 3, 8, 36, 37, 38, 200] {
            let shares = PrefetchShares::new(&bytes[..len], count);
            let mut next = 0;
            for share in 0..count + 2 {
                let part = shares.share(share);
                let start = (part.as_ptr() as usize) - (bytes.as_ptr() as usize);
                assert!(
                    part.is_empty() || start == next,
                    "len {len}, count {count}: share {share} starts at {start}, not {next}"
                );
                assert!(
                    part.is_empty() || start.is_multiple_of(64),
                    "len {len}, count {count}: share {share} not at a line"
                );
                next += part.len();
            }
            assert_eq!(next, len, "len {len}, count {count}: the shares cover {next} bytes");
        }
    }
}
