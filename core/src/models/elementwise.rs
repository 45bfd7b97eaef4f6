//! The row-wise operations of a transformer block between its matmuls: RMS norm, SwiGLU and
//! the residual add, vectorised (AVX2 when the CPU has it) and, for batches, spread over the
//! thread pool by rows.
//!
//! Each row's result depends only on that row and is computed by the same instructions
//! wherever the row sits in the batch, so batching keeps bit-identical results.

use crate::models::attention::Geometry;
use crate::quant::disjoint::DisjointSlice;
use crate::quant::{quantize_row, Q8Block};
use crate::threadpool::ThreadPool;

/// Below this many rows a step's row-wise work runs on the calling thread: waking the pool
/// costs more than the work (a decode row of SmolLM2 is a few microseconds).
const PARALLEL_ROWS: usize = 4;

/// `out_row = x_row / sqrt(mean(x_row²) + eps) * weight` for every row.
pub(crate) fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32], pool: &ThreadPool) {
    rms_norm_and_quantize_rows(x, weight, eps, out, None, pool)
}

/// [`rms_norm_rows`], each normalised row also quantized into `quantized` when given (see
/// [`QuantizedRows`]) in the same pass.
pub(crate) fn rms_norm_and_quantize_rows(
    x: &[f32],
    weight: &[f32],
    eps: f32,
    out: &mut [f32],
    quantized: Option<&mut [Q8Block]>,
    pool: &ThreadPool,
) {
    let width = weight.len();
    let n_rows = x.len() / width;
    let quantized = QuantizedRows::new(quantized, n_rows, width);
    for_row_ranges(n_rows, out, width, pool, |rows, out| {
        let x_rows = x[rows.start * width..rows.end * width].chunks_exact(width);
        for (r, (x_row, out_row)) in rows.zip(x_rows.zip(out.chunks_exact_mut(width))) {
            rms_norm_row(x_row, weight, eps, out_row);
            // SAFETY: row `r` belongs to this task alone.
            unsafe { QuantizedRows::store(&quantized, r, out_row) };
        }
    });
}

/// Where a row-wise pass also quantizes each row it writes, for the matmul that reads them
/// next ([`crate::quant::QMatrix::matmul_prequantized`]): the matmul then needs no
/// quantization pass of its own (at 16 rows or more one more pool dispatch and wait), and
/// each row is quantized right after it is computed, while it is in L1. Rows are quantized
/// one by one with [`quantize_row`], as the matmul would: the same bits.
pub(crate) struct QuantizedRows<'a> {
    blocks: DisjointSlice<'a, Q8Block>,
    blocks_per_row: usize,
}

impl<'a> QuantizedRows<'a> {
    /// `blocks` for `n_rows` rows of `width` values (`width / 32` blocks each). `None` when
    /// there are none, or the rows cannot be quantized (a width that is not a whole number of
    /// blocks: only float matrices take such rows).
    pub(crate) fn new(blocks: Option<&'a mut [Q8Block]>, n_rows: usize, width: usize) -> Option<Self> {
        let blocks = blocks.filter(|_| width.is_multiple_of(crate::quant::ACTIVATION_BLOCK))?;
        let blocks_per_row = width / crate::quant::ACTIVATION_BLOCK;
        assert_eq!(blocks.len(), n_rows * blocks_per_row, "quantized blocks for {n_rows} rows of {width}");
        Some(Self { blocks: DisjointSlice::new(blocks), blocks_per_row })
    }

    /// Quantizes `values`, row `row` of the pass, when there is somewhere to put it.
    ///
    /// # Safety
    /// No other thread stores row `row` at the same time.
    #[inline]
    unsafe fn store(this: &Option<Self>, row: usize, values: &[f32]) {
        if let Some(this) = this {
            // SAFETY: the caller owns row `row`; `new` checked the blocks cover every row.
            let blocks = unsafe { this.blocks.range_mut(row * this.blocks_per_row, this.blocks_per_row) };
            quantize_row(values, blocks);
        }
    }
}

/// [`rms_norm_rows`] for one row.
fn rms_norm_row(x_row: &[f32], weight: &[f32], eps: f32, out_row: &mut [f32]) {
    with_avx2(|| rms_norm_row_inline(x_row, weight, eps, out_row))
}

#[inline(always)]
fn rms_norm_row_inline(x_row: &[f32], weight: &[f32], eps: f32, out_row: &mut [f32]) {
    let scale = 1.0 / ((sum_of_squares(x_row) / x_row.len() as f64) as f32 + eps).sqrt();
    scale_by_weight(x_row, scale, weight, out_row);
}

/// Runs `f` compiled with AVX2 where the CPU has it, else as it is. `f` and what it calls
/// are plain scalar Rust (inlined), which the compiler vectorises 8 f32 / 4 f64 lanes wide
/// with AVX2 instead of 4 / 2 with the baseline SSE2: the row norms and residual adds take
/// half the instructions. Rust never reassociates or fuses float operations, so each value
/// goes through the same IEEE operations in the same order either way: the same bits.
#[inline(always)]
fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx2_fma() {
        #[target_feature(enable = "avx2")]
        unsafe fn compiled_for_avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { compiled_for_avx2(f) };
    }
    f()
}

/// The norms around a residual add (see [`residual_add_then_norm`]).
pub(crate) struct ResidualNorms<'a> {
    /// Values per row.
    pub width: usize,
    /// Normalise the block's output with this weight before adding it (Gemma's post-block
    /// norms); `None`: add it as it is.
    pub post: Option<&'a [f32]>,
    /// Normalise the sum with this weight into the next block's input; `None`: no next block.
    pub next: Option<&'a [f32]>,
    pub eps: f32,
}

/// The residual add between two blocks with the norms around it, per row: `x += delta`, or
/// `x += rms_norm(delta) · post`, then `normed = rms_norm(x) · next`. One pass over the rows
/// on the pool, where these were up to two norm passes, each a wait of the pool, and an add
/// on the calling thread alone. Per row the operations of [`rms_norm_rows`] and
/// [`add_in_place`] in the same order, so the same bits. `normed` is scratch when there is
/// no `next`.
///
/// With `quantized` (and a `next` norm), each `normed` row is also quantized there (see
/// [`QuantizedRows`]).
pub(crate) fn residual_add_then_norm(
    x: &mut [f32],
    delta: &[f32],
    norms: ResidualNorms<'_>,
    normed: &mut [f32],
    quantized: Option<&mut [Q8Block]>,
    pool: &ThreadPool,
) {
    let ResidualNorms { width, post, next, eps } = norms;
    debug_assert!(delta.len() == x.len() && normed.len() == x.len());
    let n_rows = x.len() / width;
    let quantized = QuantizedRows::new(quantized.filter(|_| next.is_some()), n_rows, width);
    let normed = DisjointSlice::new(normed);
    for_row_ranges(n_rows, x, width, pool, |rows, x_rows| {
        // SAFETY: each task writes only its own rows.
        let normed_rows = unsafe { normed.range_mut(rows.start * width, rows.len() * width) };
        let delta_rows = delta[rows.start * width..rows.end * width].chunks_exact(width);
        let first_row = rows.start;
        for (i, ((x_row, delta_row), normed_row)) in
            x_rows.chunks_exact_mut(width).zip(delta_rows).zip(normed_rows.chunks_exact_mut(width)).enumerate()
        {
            with_avx2(|| {
                match post {
                    Some(weight) => {
                        rms_norm_row_inline(delta_row, weight, eps, normed_row);
                        add_in_place(x_row, normed_row);
                    }
                    None => add_in_place(x_row, delta_row),
                }
                if let Some(weight) = next {
                    rms_norm_row_inline(x_row, weight, eps, normed_row);
                }
            });
            // SAFETY: the row belongs to this task alone.
            unsafe { QuantizedRows::store(&quantized, first_row + i, normed_row) };
        }
    });
}

/// `out = silu(gate) * up` for rows laid out as `[gate | up]` (`ffn_size` each); each `out`
/// row also quantized into `quantized` when given (see [`QuantizedRows`]).
pub(crate) fn swiglu_rows(
    gate_up: &[f32],
    ffn_size: usize,
    out: &mut [f32],
    quantized: Option<&mut [Q8Block]>,
    pool: &ThreadPool,
) {
    gated_rows(Gate::Silu, gate_up, ffn_size, out, quantized, pool)
}

/// `out = gelu_tanh(gate) * up` for rows laid out as `[gate | up]` (`ffn_size` each): Gemma's
/// gated FFN, with GELU's tanh approximation; each `out` row also quantized into `quantized`
/// when given.
pub(crate) fn geglu_tanh_rows(
    gate_up: &[f32],
    ffn_size: usize,
    out: &mut [f32],
    quantized: Option<&mut [Q8Block]>,
    pool: &ThreadPool,
) {
    gated_rows(Gate::GeluTanh, gate_up, ffn_size, out, quantized, pool)
}

/// `out = act(gate) * up` per `[gate | up]` row, then the row quantized when asked.
fn gated_rows(
    act: Gate,
    gate_up: &[f32],
    ffn_size: usize,
    out: &mut [f32],
    quantized: Option<&mut [Q8Block]>,
    pool: &ThreadPool,
) {
    let n_rows = out.len() / ffn_size;
    let quantized = QuantizedRows::new(quantized, n_rows, ffn_size);
    for_row_ranges(n_rows, out, ffn_size, pool, |rows, out| {
        let rows_in = gate_up[rows.start * 2 * ffn_size..rows.end * 2 * ffn_size].chunks_exact(2 * ffn_size);
        for (r, (row, out_row)) in rows.zip(rows_in.zip(out.chunks_exact_mut(ffn_size))) {
            let (gate, up) = row.split_at(ffn_size);
            gated_times(act, gate, up, out_row);
            // SAFETY: row `r` belongs to this task alone.
            unsafe { QuantizedRows::store(&quantized, r, out_row) };
        }
    });
}

/// GELU's tanh approximation `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))` is `x · sigmoid(z)`
/// with `z = 2√(2/π) (x + 0.044715 x³) = x (GELU_A + GELU_B x²)` (as `1 + tanh(t) = 2
/// sigmoid(2t)`): one `exp` per value, vectorised, instead of a libm `tanh`. Evaluated in f64
/// so the only rounding that shows is the final one to f32 (an f32 evaluation moved the real
/// Gemma 3's logits by its own rounding, amplified by the 8-bit activations downstream).
const GELU_A: f64 = 1.595_769_121_605_730_8; // 2 √(2/π)
const GELU_B: f64 = GELU_A * 0.044_715;

/// One row normalised in place: `x = x / sqrt(mean(x²) + eps) * weight` (the arithmetic of
/// [`rms_norm_rows`]).
#[cfg(test)]
fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    with_avx2(|| rms_norm_in_place_inline(x, weight, eps))
}

#[inline(always)]
fn rms_norm_in_place_inline(x: &mut [f32], weight: &[f32], eps: f32) {
    // Not `rms_norm_row`: the input is also the output.
    let scale = 1.0 / ((sum_of_squares(x) / x.len() as f64) as f32 + eps).sqrt();
    for (v, &w) in x.iter_mut().zip(weight) {
        *v = *v * scale * w;
    }
}

/// RMS-normalises every query head of each fused `[q | k | v]` row with `q_norm` and every
/// key head with `k_norm`, in place (Gemma 3's and Qwen 3's per-head norms before RoPE).
#[cfg(test)]
pub(crate) fn rms_norm_query_and_key_heads(qkv: &mut [f32], g: &Geometry, q_norm: &[f32], k_norm: &[f32], eps: f32) {
    for row in qkv.chunks_exact_mut(g.qkv_row_len) {
        rms_norm_heads_of_row(row, g, q_norm, k_norm, eps);
    }
}

/// [`rms_norm_query_and_key_heads`] for one fused `[q | k | v]` row.
pub(crate) fn rms_norm_heads_of_row(row: &mut [f32], g: &Geometry, q_norm: &[f32], k_norm: &[f32], eps: f32) {
    with_avx2(|| {
        let (queries, rest) = row.split_at_mut(g.q_dim());
        for head in queries.chunks_exact_mut(g.head_dim) {
            rms_norm_in_place_inline(head, q_norm, eps);
        }
        for head in rest[..g.kv_dim()].chunks_exact_mut(g.head_dim) {
            rms_norm_in_place_inline(head, k_norm, eps);
        }
    })
}

/// `row += bias` for every row of `x` (rows of `bias.len()` values).
#[cfg(test)]
pub(crate) fn add_bias_rows(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_in_place(row, bias);
    }
}

/// `x += delta`, element by element.
#[inline(always)]
pub(crate) fn add_in_place(x: &mut [f32], delta: &[f32]) {
    x.iter_mut().zip(delta).for_each(|(x, d)| *x += d);
}

/// Calls `f(rows, out_rows)` over contiguous row ranges: on the pool for `PARALLEL_ROWS` or
/// more rows, inline otherwise. `out` holds `n_rows` rows of `width`.
pub(crate) fn for_row_ranges(
    n_rows: usize,
    out: &mut [f32],
    width: usize,
    pool: &ThreadPool,
    f: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
) {
    debug_assert_eq!(out.len(), n_rows * width);
    if n_rows < PARALLEL_ROWS {
        return f(0..n_rows, out);
    }
    let tasks = pool.n_threads().min(n_rows);
    let rows_per_task = n_rows.div_ceil(tasks);
    let out = DisjointSlice::new(out);
    pool.run(n_rows.div_ceil(rows_per_task), &|task| {
        let rows = task * rows_per_task..((task + 1) * rows_per_task).min(n_rows);
        // SAFETY: each task writes only its own rows.
        let out_rows = unsafe { out.range_mut(rows.start * width, rows.len() * width) };
        f(rows, out_rows);
    });
}

/// Σ x² in f64, in four interleaved partial sums (element `i` goes to sum `i % 4`) combined in
/// a fixed order: wide enough that the sum of hundreds of squares loses nothing, and
/// vectorisable, which one running sum is not.
#[inline(always)]
fn sum_of_squares(x: &[f32]) -> f64 {
    let mut partial = [0f64; 4];
    let (body, tail) = x.split_at(x.len() / 4 * 4);
    for quad in body.chunks_exact(4) {
        for (p, &v) in partial.iter_mut().zip(quad) {
            *p += v as f64 * v as f64;
        }
    }
    for (p, &v) in partial.iter_mut().zip(tail) {
        *p += v as f64 * v as f64;
    }
    (partial[0] + partial[2]) + (partial[1] + partial[3])
}

#[inline(always)]
fn scale_by_weight(x: &[f32], scale: f32, weight: &[f32], out: &mut [f32]) {
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// The activation applied to the gate of a gated FFN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// `silu(g) = g · sigmoid(g)` (SwiGLU).
    Silu,
    /// `gelu_tanh(g) = g · sigmoid(g (GELU_A + GELU_B g²))` in f64, rounded once (GeGLU).
    GeluTanh,
}

/// `out[i] = act(gate[i]) * up[i]`. The AVX2 path and the portable one are the same f32
/// operations in the same order (fused multiply-adds where the vector code has them, as
/// `f32::mul_add`, which is exact without FMA hardware too), so their results are identical.
fn gated_times(act: Gate, gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx512f_f16c() {
        // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked just above).
        return unsafe {
            match act {
                Gate::GeluTanh => simd::geglu_tanh_times_avx512(gate, up, out),
                Gate::Silu => simd::swiglu_times_avx512(gate, up, out),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe {
            match act {
                Gate::Silu => simd::gated_times::<false>(gate, up, out),
                Gate::GeluTanh => simd::gated_times::<true>(gate, up, out),
            }
        };
    }
    portable::gated_times(act, gate, up, out);
}

/// `out[i] = silu(gate[i]) * up[i]`, with `silu(g) = g / (1 + e^-g)`.
#[cfg(test)]
fn silu_times(gate: &[f32], up: &[f32], out: &mut [f32]) {
    gated_times(Gate::Silu, gate, up, out);
}

/// `e^x` for `x <= 0` (-inf gives 0): the scalar twin of [`simd::exp_nonpositive`], the same
/// bits.
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    // The portable code's `mul_add`s are a libm call each (a software fused multiply-add)
    // when compiled for the baseline x86-64, and `floor` another: attention's per-tile softmax
    // correction spent ~3% of a SmolLM2 prefill there. Compiled with FMA and SSE4.1 they are
    // single instructions computing the same correctly rounded results: the same bits.
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx2_fma() {
        #[target_feature(enable = "fma,sse4.1")]
        unsafe fn with_fma_instructions(x: f32) -> f32 {
            portable::exp_nonpositive(x)
        }
        // SAFETY: the CPU has FMA (checked just above), and SSE4.1 with its AVX2.
        return unsafe { with_fma_instructions(x) };
    }
    portable::exp_nonpositive(x)
}

/// Constants of the f64 `e^x` (x <= 0) of [`portable`] and [`simd`].
mod exp_f64 {
    /// Below ln(f64::MIN_POSITIVE), `e^x` is flushed to 0.
    pub const LOWEST: f64 = -708.39;
    /// ln 2 split in two (Cephes) so that `n · LN2_HIGH` is exact for every `n` that occurs.
    pub const LN2_HIGH: f64 = 6.931_457_519_531_25e-1;
    pub const LN2_LOW: f64 = 1.428_606_820_309_417_3e-6;
    /// `1/k!` for k = 13 down to 0: `e^r` for |r| <= ln2/2, truncation below 5e-18 relative.
    pub const TAYLOR: [f64; 14] = [
        1.0 / 6_227_020_800.0,
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
}

/// The scalar twins of [`simd`]'s functions, operation for operation.
mod portable {
    use super::{Gate, GELU_A, GELU_B};

    pub(super) fn gated_times(act: Gate, gate: &[f32], up: &[f32], out: &mut [f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = match act {
                Gate::Silu => sigmoid_times(g, g, u),
                Gate::GeluTanh => gelu_tanh(g) * u,
            };
        }
    }

    /// `x sigmoid(x (GELU_A + GELU_B x²))` in f64 (plain multiplies and adds where the vector
    /// code has them, never fused), rounded to f32.
    fn gelu_tanh(x: f32) -> f32 {
        let x = x as f64;
        let z = x * (GELU_B * (x * x) + GELU_A);
        let e = exp_nonpositive_f64(-z.abs());
        let numerator = if z.is_sign_negative() { e } else { 1.0 };
        (x * (numerator / (1.0 + e))) as f32
    }

    /// [`super::simd::exp_nonpositive_f64`] for one value.
    pub(super) fn exp_nonpositive_f64(x: f64) -> f64 {
        use super::exp_f64::*;
        let underflow = x < LOWEST;
        let x = x.max(LOWEST);
        let n = x.mul_add(std::f64::consts::LOG2_E, 0.5).floor();
        let r = (-n).mul_add(LN2_HIGH, x);
        let r = (-n).mul_add(LN2_LOW, r);
        let mut y = TAYLOR[0];
        for &c in &TAYLOR[1..] {
            y = y.mul_add(r, c);
        }
        let pow2n = f64::from_bits(((n as i64 + 1023) as u64) << 52);
        if underflow {
            0.0
        } else {
            y * pow2n
        }
    }

    /// `x · sigmoid(z) · u` with `e = e^-|z|`: sigmoid(z) is `1 / (1 + e)` for z >= 0 and
    /// `e / (1 + e)` for z < 0 (the sign bit decides, as the vector blend does).
    fn sigmoid_times(z: f32, x: f32, u: f32) -> f32 {
        let e = exp_nonpositive(-z.abs());
        let numerator = if z.is_sign_negative() { e } else { 1.0 };
        x * (numerator / (1.0 + e)) * u
    }

    /// [`super::simd::exp_nonpositive`] for one value.
    #[inline(always)]
    pub(super) fn exp_nonpositive(x: f32) -> f32 {
        const LOWEST: f32 = -87.336_55;
        let underflow = x < LOWEST;
        let x = x.max(LOWEST);
        let n = x.mul_add(std::f32::consts::LOG2_E, 0.5).floor();
        let r = (-n).mul_add(0.693_359_4, x);
        let r = (-n).mul_add(-2.121_944_4e-4, r);
        let mut y = 1.987_569_1e-4f32;
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            y = y.mul_add(r, c);
        }
        y = y.mul_add(r * r, r + 1.0);
        let pow2n = f32::from_bits(((n as i32 + 127) as u32) << 23);
        if underflow {
            0.0
        } else {
            y * pow2n
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod simd {
    use std::arch::x86_64::*;

    use super::{GELU_A, GELU_B};

    /// `out = act(gate) * up` (`GELU`: GELU-tanh, else SiLU), 8 lanes at a time; the tail
    /// goes through a padded copy.
    ///
    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn gated_times<const GELU: bool>(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = out.len().min(gate.len()).min(up.len());
        let full = n / 8 * 8;
        for i in (0..full).step_by(8) {
            let value = gated8::<GELU>(_mm256_loadu_ps(gate.as_ptr().add(i)), _mm256_loadu_ps(up.as_ptr().add(i)));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), value);
        }
        if full < n {
            let (mut g, mut u, mut o) = ([0f32; 8], [0f32; 8], [0f32; 8]);
            g[..n - full].copy_from_slice(&gate[full..n]);
            u[..n - full].copy_from_slice(&up[full..n]);
            _mm256_storeu_ps(o.as_mut_ptr(), gated8::<GELU>(_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr())));
            out[full..n].copy_from_slice(&o[..n - full]);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn gated8<const GELU: bool>(g: __m256, u: __m256) -> __m256 {
        if GELU {
            let low = gelu_tanh4(_mm256_cvtps_pd(_mm256_castps256_ps128(g)));
            let high = gelu_tanh4(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(g)));
            _mm256_mul_ps(_mm256_insertf128_ps::<1>(_mm256_castps128_ps256(low), high), u)
        } else {
            sigmoid_times8(g, g, u)
        }
    }

    /// [`gated_times`] for GELU-tanh with eight f64 lanes per vector instead of four: the
    /// f64 evaluation is most of a Gemma prefill's FFN work outside the matmuls, and it is
    /// latency-bound (a 13-term Horner chain), so twice the lanes per chain is about twice the
    /// rate. Every lane sees the same IEEE operations as [`gelu_tanh4`] and the portable
    /// twin (multiply, add, fused multiply-add, floor, divide, conversions), so the bits are
    /// the same.
    ///
    /// # Safety
    /// AVX-512F, AVX2 and FMA must be available.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(crate) unsafe fn geglu_tanh_times_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = out.len().min(gate.len()).min(up.len());
        let full = n / 8 * 8;
        let geglu8 = |g: __m256, u: __m256| _mm256_mul_ps(gelu_tanh8(_mm512_cvtps_pd(g)), u);
        for i in (0..full).step_by(8) {
            let value = geglu8(_mm256_loadu_ps(gate.as_ptr().add(i)), _mm256_loadu_ps(up.as_ptr().add(i)));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), value);
        }
        if full < n {
            let (mut g, mut u, mut o) = ([0f32; 8], [0f32; 8], [0f32; 8]);
            g[..n - full].copy_from_slice(&gate[full..n]);
            u[..n - full].copy_from_slice(&up[full..n]);
            _mm256_storeu_ps(o.as_mut_ptr(), geglu8(_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr())));
            out[full..n].copy_from_slice(&o[..n - full]);
        }
    }

    /// [`gated_times`] for SiLU with sixteen f32 lanes per vector instead of eight: the same
    /// IEEE operations per lane as [`sigmoid_times8`] and the portable twin (the sign-bit
    /// blend as a mask of the sign bit), so the same bits.
    ///
    /// # Safety
    /// AVX-512F, AVX2 and FMA must be available.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(crate) unsafe fn swiglu_times_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = out.len().min(gate.len()).min(up.len());
        let full = n / 16 * 16;
        for i in (0..full).step_by(16) {
            let value = sigmoid_times16(_mm512_loadu_ps(gate.as_ptr().add(i)), _mm512_loadu_ps(up.as_ptr().add(i)));
            _mm512_storeu_ps(out.as_mut_ptr().add(i), value);
        }
        if full < n {
            let (mut g, mut u, mut o) = ([0f32; 16], [0f32; 16], [0f32; 16]);
            g[..n - full].copy_from_slice(&gate[full..n]);
            u[..n - full].copy_from_slice(&up[full..n]);
            _mm512_storeu_ps(o.as_mut_ptr(), sigmoid_times16(_mm512_loadu_ps(g.as_ptr()), _mm512_loadu_ps(u.as_ptr())));
            out[full..n].copy_from_slice(&o[..n - full]);
        }
    }

    /// [`sigmoid_times8`] with `z = x = g` on sixteen lanes.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn sigmoid_times16(g: __m512, u: __m512) -> __m512 {
        let sign_bit = _mm512_set1_epi32(i32::MIN);
        let negative = _mm512_test_epi32_mask(_mm512_castps_si512(g), sign_bit);
        let e = exp_nonpositive_x16(_mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(g), sign_bit)));
        let numerator = _mm512_mask_blend_ps(negative, _mm512_set1_ps(1.0), e);
        let sigmoid = _mm512_div_ps(numerator, _mm512_add_ps(_mm512_set1_ps(1.0), e));
        _mm512_mul_ps(_mm512_mul_ps(g, sigmoid), u)
    }

    /// [`exp_nonpositive`] on sixteen lanes, operation for operation.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    pub(crate) unsafe fn exp_nonpositive_x16(x: __m512) -> __m512 {
        let lowest = _mm512_set1_ps(-87.336_55);
        let underflow = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lowest);
        let x = _mm512_max_ps(x, lowest);
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(_mm512_fmadd_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
            _mm512_set1_ps(0.5),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm512_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(c));
        }
        y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        let pow2n = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)));
        _mm512_maskz_mov_ps(!underflow, _mm512_mul_ps(y, _mm512_castsi512_ps(pow2n)))
    }

    /// [`gelu_tanh4`] on eight f64 lanes. The sign-bit blend of `_mm256_blendv_pd` is a mask
    /// from the sign bit itself (`vptestmq`), so `-0.0` and negative NaNs choose as it does.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn gelu_tanh8(x: __m512d) -> __m256 {
        let square = _mm512_mul_pd(x, x);
        let z = _mm512_mul_pd(x, _mm512_add_pd(_mm512_mul_pd(_mm512_set1_pd(GELU_B), square), _mm512_set1_pd(GELU_A)));
        let sign_bit = _mm512_set1_epi64(i64::MIN);
        let negative = _mm512_test_epi64_mask(_mm512_castpd_si512(z), sign_bit);
        let e = exp_nonpositive_f64_x8(_mm512_castsi512_pd(_mm512_or_si512(_mm512_castpd_si512(z), sign_bit)));
        let numerator = _mm512_mask_blend_pd(negative, _mm512_set1_pd(1.0), e);
        _mm512_cvtpd_ps(_mm512_mul_pd(x, _mm512_div_pd(numerator, _mm512_add_pd(_mm512_set1_pd(1.0), e))))
    }

    /// [`exp_nonpositive_f64`] on eight lanes, operation for operation.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn exp_nonpositive_f64_x8(x: __m512d) -> __m512d {
        use super::exp_f64::*;
        let lowest = _mm512_set1_pd(LOWEST);
        let underflow = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(x, lowest);
        let x = _mm512_max_pd(x, lowest);
        let n = _mm512_roundscale_pd::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(_mm512_fmadd_pd(
            x,
            _mm512_set1_pd(std::f64::consts::LOG2_E),
            _mm512_set1_pd(0.5),
        ));
        let r = _mm512_fnmadd_pd(n, _mm512_set1_pd(LN2_HIGH), x);
        let r = _mm512_fnmadd_pd(n, _mm512_set1_pd(LN2_LOW), r);
        let mut y = _mm512_set1_pd(TAYLOR[0]);
        for &c in &TAYLOR[1..] {
            y = _mm512_fmadd_pd(y, r, _mm512_set1_pd(c));
        }
        let biased = _mm512_castpd_si512(_mm512_add_pd(n, _mm512_set1_pd(1023.0 + 4_503_599_627_370_496.0)));
        let pow2n = _mm512_castsi512_pd(_mm512_slli_epi64::<52>(biased));
        _mm512_maskz_mov_pd(!underflow, _mm512_mul_pd(y, pow2n))
    }

    /// `x sigmoid(x (GELU_A + GELU_B x²))` for four f64 lanes, rounded to f32.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn gelu_tanh4(x: __m256d) -> __m128 {
        let square = _mm256_mul_pd(x, x);
        let z = _mm256_mul_pd(x, _mm256_add_pd(_mm256_mul_pd(_mm256_set1_pd(GELU_B), square), _mm256_set1_pd(GELU_A)));
        let e = exp_nonpositive_f64(_mm256_or_pd(z, _mm256_set1_pd(-0.0)));
        let numerator = _mm256_blendv_pd(_mm256_set1_pd(1.0), e, z);
        _mm256_cvtpd_ps(_mm256_mul_pd(x, _mm256_div_pd(numerator, _mm256_add_pd(_mm256_set1_pd(1.0), e))))
    }

    /// e^x for x <= 0 in f64 (a degree-13 Taylor polynomial after range reduction, a few
    /// ulp); inputs below `exp_f64::LOWEST` give 0.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn exp_nonpositive_f64(x: __m256d) -> __m256d {
        use super::exp_f64::*;
        let lowest = _mm256_set1_pd(LOWEST);
        let underflow = _mm256_cmp_pd::<_CMP_LT_OQ>(x, lowest);
        let x = _mm256_max_pd(x, lowest);
        let n = _mm256_floor_pd(_mm256_fmadd_pd(x, _mm256_set1_pd(std::f64::consts::LOG2_E), _mm256_set1_pd(0.5)));
        let r = _mm256_fnmadd_pd(n, _mm256_set1_pd(LN2_HIGH), x);
        let r = _mm256_fnmadd_pd(n, _mm256_set1_pd(LN2_LOW), r);
        let mut y = _mm256_set1_pd(TAYLOR[0]);
        for &c in &TAYLOR[1..] {
            y = _mm256_fmadd_pd(y, r, _mm256_set1_pd(c));
        }
        // 2^n from the exponent bits: n + 1023 (1..=1023, exact) sits in the low mantissa
        // bits of n + 1023 + 2^52, and a shift by 52 moves it into the exponent field.
        let biased = _mm256_castpd_si256(_mm256_add_pd(n, _mm256_set1_pd(1023.0 + 4_503_599_627_370_496.0)));
        let pow2n = _mm256_castsi256_pd(_mm256_slli_epi64::<52>(biased));
        _mm256_andnot_pd(underflow, _mm256_mul_pd(y, pow2n))
    }

    /// x · sigmoid(z) · u with `e = e^-|z|` (never overflows): sigmoid(z) is `1 / (1 + e)`
    /// for z >= 0 and `e / (1 + e)` for z < 0.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn sigmoid_times8(z: __m256, x: __m256, u: __m256) -> __m256 {
        let sign = _mm256_set1_ps(-0.0);
        let e = exp_nonpositive(_mm256_or_ps(z, sign));
        let numerator = _mm256_blendv_ps(_mm256_set1_ps(1.0), e, z);
        let sigmoid = _mm256_div_ps(numerator, _mm256_add_ps(_mm256_set1_ps(1.0), e));
        _mm256_mul_ps(_mm256_mul_ps(x, sigmoid), u)
    }

    /// e^x for x <= 0 (Cephes' single-precision polynomial, about 1 ulp); inputs below
    /// ln(f32::MIN_POSITIVE) give 0.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn exp_nonpositive(x: __m256) -> __m256 {
        let lowest = _mm256_set1_ps(-87.336_55);
        let underflow = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lowest);
        let x = _mm256_max_ps(x, lowest);
        // x = n·ln2 + r with |r| <= ln2/2; ln2 split in two for an exact n·ln2_hi.
        let n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), _mm256_set1_ps(0.5)));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        // Scale by 2^n through the exponent bits (n >= -126 after the clamp).
        let pow2n = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_andnot_ps(underflow, _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_matches_the_formula_in_f64() {
        let gate: Vec<f32> = (0..203).map(|i| (i as f32 - 101.0) * 0.37).chain([-90.0, 90.0, 0.0, -0.0]).collect();
        let up: Vec<f32> = gate.iter().enumerate().map(|(i, _)| 1.0 + (i % 7) as f32 * 0.25).collect();
        let mut out = vec![f32::NAN; gate.len()];
        silu_times(&gate, &up, &mut out);
        for ((&g, &u), &got) in gate.iter().zip(&up).zip(&out) {
            let want = g as f64 / (1.0 + (-(g as f64)).exp()) * u as f64;
            assert!((got as f64 - want).abs() <= 4e-7 * want.abs() + 1e-30, "silu({g}) * {u}: {got} vs {want}");
        }
    }

    /// Gate values over the range activations take and past it (both underflow ends, the
    /// sign change, the 8-lane tail).
    fn sweep() -> Vec<f32> {
        (0..4003).map(|i| (i as f32 - 2001.0) * 0.0137).chain([-90.0, 90.0, 1e20, -1e20, 0.0, -0.0, 3e-39]).collect()
    }

    fn gated(act: Gate, gate: &[f32]) -> Vec<f32> {
        let up: Vec<f32> = (0..gate.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let mut out = vec![f32::NAN; gate.len()];
        gated_times(act, gate, &up, &mut out);
        out
    }

    #[test]
    fn gelu_tanh_matches_the_formula_in_f64() {
        let gate = sweep();
        let up: Vec<f32> = (0..gate.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        for ((&g, &u), &got) in gate.iter().zip(&up).zip(&gated(Gate::GeluTanh, &gate)) {
            let x = g as f64;
            let t = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3));
            let tanh_form = (0.5 * x * (1.0 + t.tanh())) as f32 * u;
            if x >= -5.0 {
                // Where 1 + tanh t does not cancel, the same f32 as the tanh formula in f64
                // (so the model's logits do not move).
                assert_eq!(got.to_bits(), tanh_form.to_bits(), "gelu({g}) * {u}: {got} vs {tanh_form}");
            }
            // Everywhere: as x / (1 + e^-2t), the same function without that cancellation.
            let want = x / (1.0 + (-2.0 * t).exp()) * u as f64;
            assert!((got as f64 - want).abs() <= 2.5e-7 * want.abs() + 1e-44, "gelu({g}) * {u}: {got} vs {want}");
        }
    }

    #[test]
    fn the_vector_and_portable_gates_agree_bitwise() {
        let gate = sweep();
        let up: Vec<f32> = (0..gate.len()).map(|i| 0.5 - (i % 5) as f32 * 0.3).collect();
        for act in [Gate::Silu, Gate::GeluTanh] {
            let mut portable = vec![f32::NAN; gate.len()];
            portable::gated_times(act, &gate, &up, &mut portable);
            let dispatched = {
                let mut out = vec![f32::NAN; gate.len()];
                gated_times(act, &gate, &up, &mut out);
                out
            };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&portable), bits(&dispatched), "{act:?}");
        }
        for x in [-87.0f32, -20.5, -1.0, -0.3, -1e-8, 0.0] {
            let e = portable::exp_nonpositive(x) as f64;
            assert!((e - (x as f64).exp()).abs() <= 3e-7 * (x as f64).exp(), "exp({x}) = {e}");
        }
        for x in [-708.0f64, -100.3, -20.5, -1.0, -0.3466, -1e-12, 0.0] {
            let e = portable::exp_nonpositive_f64(x);
            assert!((e - x.exp()).abs() <= 1e-15 * x.exp(), "exp({x}) = {e}");
        }
    }

    /// Each GELU-tanh vector path against the portable statement directly, so the comparison
    /// does not depend on which one `gated_times` dispatches to.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_vector_gate_path_matches_the_portable_one_bit_for_bit() {
        let mut gate = sweep();
        // Negative NaN and -0.0 (the sign-bit blend), past both ends of the exp clamp.
        gate.extend([-f32::NAN, f32::NAN, -0.0, -1e-45, 1e-45, -40.0, 40.0, f32::INFINITY, f32::NEG_INFINITY]);
        let up: Vec<f32> = (0..gate.len()).map(|i| 0.5 - (i % 5) as f32 * 0.3).collect();
        let mut portable = vec![f32::NAN; gate.len()];
        portable::gated_times(Gate::GeluTanh, &gate, &up, &mut portable);
        // The first value that differs, if any (a whole-vector assert would print 4000 values).
        let first_difference = |a: &[f32], b: &[f32]| {
            a.iter().zip(b).position(|(x, y)| x.to_bits() != y.to_bits()).map(|i| (i, gate[i], a[i], b[i]))
        };
        if crate::cpu::has_avx2_fma() {
            let mut avx2 = vec![f32::NAN; gate.len()];
            // SAFETY: AVX2 and FMA checked just above.
            unsafe { simd::gated_times::<true>(&gate, &up, &mut avx2) };
            assert_eq!(first_difference(&avx2, &portable), None, "AVX2 (index, gate, got, portable)");
        }
        if crate::cpu::has_avx512f_f16c() {
            let mut silu = vec![f32::NAN; gate.len()];
            portable::gated_times(Gate::Silu, &gate, &up, &mut silu);
            for len in [gate.len(), gate.len() - 1, gate.len() - 9, gate.len() - 15] {
                let mut avx512 = vec![f32::NAN; len];
                // SAFETY: AVX-512F, AVX2 and FMA checked just above.
                unsafe { simd::swiglu_times_avx512(&gate[..len], &up[..len], &mut avx512) };
                assert_eq!(
                    first_difference(&avx512, &silu),
                    None,
                    "SiLU AVX-512, {len} values (index, gate, got, portable)"
                );
            }
            // Every tail length, so the padded last vector is covered too.
            for len in [gate.len(), gate.len() - 1, gate.len() - 3, gate.len() - 7] {
                let mut avx512 = vec![f32::NAN; len];
                // SAFETY: AVX-512F, AVX2 and FMA checked just above.
                unsafe { simd::geglu_tanh_times_avx512(&gate[..len], &up[..len], &mut avx512) };
                assert_eq!(
                    first_difference(&avx512, &portable),
                    None,
                    "AVX-512, {len} values (index, gate, got, portable)"
                );
            }
        } else {
            eprintln!("AVX-512 path not checked: this CPU has no AVX-512F");
        }
    }

    #[test]
    fn the_fused_residual_pass_equals_the_separate_norms_and_add() {
        let pool = ThreadPool::new(2).expect("start the thread pool");
        let width = 40;
        for n_rows in [1, PARALLEL_ROWS, 13] {
            let value = |i: usize, k: usize| ((i * k % 101) as f32 - 50.0) * 0.013;
            let x: Vec<f32> = (0..n_rows * width).map(|i| value(i, 37)).collect();
            let delta: Vec<f32> = (0..n_rows * width).map(|i| value(i, 53)).collect();
            let post: Vec<f32> = (0..width).map(|i| 0.5 + i as f32 * 0.01).collect();
            let next: Vec<f32> = (0..width).map(|i| 1.5 - i as f32 * 0.02).collect();
            for (post, next) in
                [(None, None), (None, Some(&next[..])), (Some(&post[..]), None), (Some(&post[..]), Some(&next[..]))]
            {
                let (mut separate_x, mut separate_normed) = (x.clone(), vec![0f32; x.len()]);
                match post {
                    Some(weight) => {
                        let mut normed_delta = vec![0f32; x.len()];
                        rms_norm_rows(&delta, weight, 1e-6, &mut normed_delta, &pool);
                        add_in_place(&mut separate_x, &normed_delta);
                    }
                    None => add_in_place(&mut separate_x, &delta),
                }
                if let Some(weight) = next {
                    rms_norm_rows(&separate_x, weight, 1e-6, &mut separate_normed, &pool);
                }
                let (mut fused_x, mut fused_normed) = (x.clone(), vec![0f32; x.len()]);
                let norms = ResidualNorms { width, post, next, eps: 1e-6 };
                residual_add_then_norm(&mut fused_x, &delta, norms, &mut fused_normed, None, &pool);
                let case = format!("{n_rows} rows, post {}, next {}", post.is_some(), next.is_some());
                assert_eq!(fused_x, separate_x, "{case}");
                if next.is_some() {
                    assert_eq!(fused_normed, separate_normed, "{case}");
                }
            }
        }
    }

    /// `rows` quantized one by one, as a matmul quantizes its activations.
    fn quantized_one_by_one(rows: &[f32], width: usize) -> Vec<Q8Block> {
        let mut blocks = vec![Q8Block::default(); rows.len() / width * (width / 32)];
        for (row, out) in rows.chunks_exact(width).zip(blocks.chunks_exact_mut(width / 32)) {
            quantize_row(row, out);
        }
        blocks
    }

    /// `blocks` equal `expected` block for block, every field by its bits ([`Q8Block::same_bits`]).
    fn assert_same_blocks(blocks: &[Q8Block], expected: &[Q8Block], what: &str) {
        assert_eq!(blocks.len(), expected.len(), "{what}: block count");
        let first_differing = blocks.iter().zip(expected).position(|(a, b)| !a.same_bits(b));
        assert_eq!(first_differing, None, "{what}: first block that differs");
    }

    /// Blocks that no quantization produces, so a row the pass forgot shows.
    fn stale_blocks(n: usize) -> Vec<Q8Block> {
        vec![Q8Block { d: f32::NAN, sum: i32::MIN, q: [i8::MIN; 32], ..Q8Block::default() }; n]
    }

    /// The passes that quantize the rows they write (for the next matmul, in the same pool
    /// pass) give the blocks a separate quantization of their outputs gives, at row counts on
    /// both sides of the pool threshold, and write the same float rows as without blocks.
    #[test]
    fn row_passes_quantize_each_written_row_as_a_separate_pass_would() {
        let pool = ThreadPool::new(2).expect("start the thread pool");
        let (width, ffn) = (64, 96);
        let value = |i: usize, k: usize| ((i * k % 101) as f32 - 50.0) * 0.013;
        let weight: Vec<f32> = (0..width).map(|i| 1.5 - i as f32 * 0.02).collect();
        for n_rows in [1, PARALLEL_ROWS - 1, PARALLEL_ROWS, 13, 32] {
            let x: Vec<f32> = (0..n_rows * width).map(|i| value(i, 37)).collect();
            let delta: Vec<f32> = (0..n_rows * width).map(|i| value(i, 53)).collect();
            let gate_up: Vec<f32> = (0..n_rows * 2 * ffn).map(|i| value(i, 29)).collect();

            let (mut normed, mut plain) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            let mut blocks = stale_blocks(n_rows * width / 32);
            rms_norm_and_quantize_rows(&x, &weight, 1e-6, &mut normed, Some(&mut blocks), &pool);
            rms_norm_rows(&x, &weight, 1e-6, &mut plain, &pool);
            assert_eq!(normed, plain, "norm, {n_rows} rows");
            assert_same_blocks(&blocks, &quantized_one_by_one(&normed, width), &format!("norm, {n_rows} rows"));

            for post in [None, Some(&weight[..])] {
                let (mut summed, mut plain_x) = (x.clone(), x.clone());
                let mut blocks = stale_blocks(n_rows * width / 32);
                let norms = || ResidualNorms { width, post, next: Some(&weight), eps: 1e-6 };
                residual_add_then_norm(&mut summed, &delta, norms(), &mut normed, Some(&mut blocks), &pool);
                residual_add_then_norm(&mut plain_x, &delta, norms(), &mut plain, None, &pool);
                assert_eq!((&summed, &normed), (&plain_x, &plain), "residual, {n_rows} rows");
                let what = format!("residual, post {}, {n_rows} rows", post.is_some());
                assert_same_blocks(&blocks, &quantized_one_by_one(&normed, width), &what);
            }

            type Pass = fn(&[f32], usize, &mut [f32], Option<&mut [Q8Block]>, &ThreadPool);
            for (name, pass) in [("swiglu", swiglu_rows as Pass), ("geglu", geglu_tanh_rows as Pass)] {
                let (mut hidden, mut plain_hidden) = (vec![0f32; n_rows * ffn], vec![0f32; n_rows * ffn]);
                let mut blocks = stale_blocks(n_rows * ffn / 32);
                pass(&gate_up, ffn, &mut hidden, Some(&mut blocks), &pool);
                pass(&gate_up, ffn, &mut plain_hidden, None, &pool);
                assert_eq!(hidden, plain_hidden, "{name}, {n_rows} rows");
                assert_same_blocks(&blocks, &quantized_one_by_one(&hidden, ffn), &format!("{name}, {n_rows} rows"));
            }
        }
    }

    /// The row norms compiled for AVX2 (what the forward runs on such CPUs) against the same
    /// code compiled for the baseline, on widths around every vector and unroll boundary.
    #[test]
    fn row_norms_compiled_for_avx2_equal_the_baseline_bitwise() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for width in [1usize, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 64, 256, 257, 640] {
            let x: Vec<f32> = (0..width).map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 1.7e-3).collect();
            let weight: Vec<f32> = (0..width).map(|i| 0.75 + (i % 13) as f32 * 0.031).collect();
            let (mut baseline, mut dispatched) = (vec![0f32; width], vec![0f32; width]);
            rms_norm_row_inline(&x, &weight, 1e-6, &mut baseline);
            rms_norm_row(&x, &weight, 1e-6, &mut dispatched);
            assert_eq!(bits(&dispatched), bits(&baseline), "rms_norm_row, width {width}");
            let (mut baseline, mut dispatched) = (x.clone(), x.clone());
            rms_norm_in_place_inline(&mut baseline, &weight, 1e-6);
            rms_norm_in_place(&mut dispatched, &weight, 1e-6);
            assert_eq!(bits(&dispatched), bits(&baseline), "rms_norm_in_place, width {width}");
        }
    }

    #[test]
    fn scalar_exp_with_fma_instructions_equals_the_baseline_bitwise() {
        // Across the whole clamp range, the underflow edge, zeros and non-finite inputs.
        let inputs = (0..20_000).map(|i| -(i as f32) * 0.004_37).chain([
            -87.336_55,
            -87.34,
            -88.0,
            -1e-30,
            0.0,
            -0.0,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::MIN_POSITIVE,
        ]);
        for x in inputs {
            let (dispatched, baseline) = (exp_nonpositive(x), portable::exp_nonpositive(x));
            assert_eq!(dispatched.to_bits(), baseline.to_bits(), "e^{x}: {dispatched} vs {baseline}");
        }
    }

    #[test]
    fn rms_norm_in_place_matches_rms_norm_rows_bitwise() {
        let pool = ThreadPool::new(1).expect("start the thread pool");
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 13.0) * 0.37).collect();
        let weight: Vec<f32> = (0..32).map(|i| 0.5 + i as f32 * 0.03).collect();
        let mut rows = vec![0f32; 32];
        rms_norm_rows(&x, &weight, 1e-6, &mut rows, &pool);
        let mut in_place = x.clone();
        rms_norm_in_place(&mut in_place, &weight, 1e-6);
        assert_eq!(rows, in_place);
    }

    #[test]
    fn rms_norm_rows_alone_and_on_the_pool_agree_bitwise() {
        let pool = ThreadPool::new(2).expect("start the thread pool");
        let width = 40;
        let x: Vec<f32> = (0..9 * width).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01).collect();
        let weight: Vec<f32> = (0..width).map(|i| 0.5 + i as f32 * 0.01).collect();
        let mut batched = vec![0f32; x.len()];
        rms_norm_rows(&x, &weight, 1e-5, &mut batched, &pool);
        for (x_row, batched_row) in x.chunks_exact(width).zip(batched.chunks_exact(width)) {
            let mut alone = vec![0f32; width];
            rms_norm_rows(x_row, &weight, 1e-5, &mut alone, &pool);
            assert_eq!(alone, batched_row);
            let mean_square = x_row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / width as f64;
            for ((&v, &w), &got) in x_row.iter().zip(&weight).zip(&alone) {
                let want = v as f64 / (mean_square + 1e-5).sqrt() * w as f64;
                assert!((got as f64 - want).abs() <= 1e-6 * want.abs() + 1e-9, "{got} vs {want}");
            }
        }
    }
}
