//! The row-wise operations of a transformer block between its matmuls: RMS norm, SwiGLU and
//! the residual add, vectorised (AVX2 when the CPU has it) and, for batches, spread over the
//! thread pool by rows.
//!
//! Each row's result depends only on that row and is computed by the same instructions
//! wherever the row sits in the batch, so batching keeps bit-identical results.

use crate::models::attention::Geometry;
use crate::quant::disjoint::DisjointSlice;
use crate::threadpool::ThreadPool;

/// Below this many rows a step's row-wise work runs on the calling thread: waking the pool
/// costs more than the work (a decode row of SmolLM2 is a few microseconds).
const PARALLEL_ROWS: usize = 4;

/// `out_row = x_row / sqrt(mean(x_row²) + eps) * weight` for every row.
pub(crate) fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32], pool: &ThreadPool) {
    let width = weight.len();
    for_row_ranges(x.len() / width, out, width, pool, |rows, out| {
        for (x_row, out_row) in
            x[rows.start * width..rows.end * width].chunks_exact(width).zip(out.chunks_exact_mut(width))
        {
            let scale = 1.0 / ((sum_of_squares(x_row) / width as f64) as f32 + eps).sqrt();
            scale_by_weight(x_row, scale, weight, out_row);
        }
    });
}

/// `out = silu(gate) * up` for rows laid out as `[gate | up]` (`ffn_size` each).
pub(crate) fn swiglu_rows(gate_up: &[f32], ffn_size: usize, out: &mut [f32], pool: &ThreadPool) {
    for_row_ranges(out.len() / ffn_size, out, ffn_size, pool, |rows, out| {
        let rows_in = &gate_up[rows.start * 2 * ffn_size..rows.end * 2 * ffn_size];
        for (row, out_row) in rows_in.chunks_exact(2 * ffn_size).zip(out.chunks_exact_mut(ffn_size)) {
            let (gate, up) = row.split_at(ffn_size);
            silu_times(gate, up, out_row);
        }
    });
}

/// `out = gelu_tanh(gate) * up` for rows laid out as `[gate | up]` (`ffn_size` each): Gemma's
/// gated FFN, with GELU's tanh approximation.
pub(crate) fn geglu_tanh_rows(gate_up: &[f32], ffn_size: usize, out: &mut [f32], pool: &ThreadPool) {
    for_row_ranges(out.len() / ffn_size, out, ffn_size, pool, |rows, out| {
        let rows_in = &gate_up[rows.start * 2 * ffn_size..rows.end * 2 * ffn_size];
        for (row, out_row) in rows_in.chunks_exact(2 * ffn_size).zip(out.chunks_exact_mut(ffn_size)) {
            let (gate, up) = row.split_at(ffn_size);
            for ((o, &g), &u) in out_row.iter_mut().zip(gate).zip(up) {
                *o = gelu_tanh(g) * u;
            }
        }
    });
}

/// `0.5 x (1 + tanh(sqrt(2/π) (x + 0.044715 x³)))`, evaluated in f64 so the only rounding
/// is the final one.
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
    let x = x as f64;
    (0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())) as f32
}

/// One row normalised in place: `x = x / sqrt(mean(x²) + eps) * weight` (the arithmetic of
/// [`rms_norm_rows`]).
pub(crate) fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let scale = 1.0 / ((sum_of_squares(x) / x.len() as f64) as f32 + eps).sqrt();
    for (v, &w) in x.iter_mut().zip(weight) {
        *v = *v * scale * w;
    }
}

/// RMS-normalises every query head of each fused `[q | k | v]` row with `q_norm` and every
/// key head with `k_norm`, in place (Gemma 3's and Qwen 3's per-head norms before RoPE).
pub(crate) fn rms_norm_query_and_key_heads(qkv: &mut [f32], g: &Geometry, q_norm: &[f32], k_norm: &[f32], eps: f32) {
    for row in qkv.chunks_exact_mut(g.qkv_row_len) {
        let (queries, rest) = row.split_at_mut(g.q_dim());
        for head in queries.chunks_exact_mut(g.head_dim) {
            rms_norm_in_place(head, q_norm, eps);
        }
        for head in rest[..g.kv_dim()].chunks_exact_mut(g.head_dim) {
            rms_norm_in_place(head, k_norm, eps);
        }
    }
}

/// `row += bias` for every row of `x` (rows of `bias.len()` values).
pub(crate) fn add_bias_rows(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_in_place(row, bias);
    }
}

/// `x += delta`, element by element.
pub(crate) fn add_in_place(x: &mut [f32], delta: &[f32]) {
    x.iter_mut().zip(delta).for_each(|(x, d)| *x += d);
}

/// Calls `f(rows, out_rows)` over contiguous row ranges: on the pool for `PARALLEL_ROWS` or
/// more rows, inline otherwise. `out` holds `n_rows` rows of `width`.
fn for_row_ranges(
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

fn scale_by_weight(x: &[f32], scale: f32, weight: &[f32], out: &mut [f32]) {
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// `out[i] = silu(gate[i]) * up[i]`, with `silu(g) = g / (1 + e^-g)`.
fn silu_times(gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { simd::silu_times(gate, up, out) };
    }
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod simd {
    use std::arch::x86_64::*;

    /// `out = silu(gate) * up`, 8 lanes at a time; the tail goes through a padded copy.
    ///
    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn silu_times(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = out.len().min(gate.len()).min(up.len());
        let full = n / 8 * 8;
        for i in (0..full).step_by(8) {
            let value = silu_times8(_mm256_loadu_ps(gate.as_ptr().add(i)), _mm256_loadu_ps(up.as_ptr().add(i)));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), value);
        }
        if full < n {
            let (mut g, mut u, mut o) = ([0f32; 8], [0f32; 8], [0f32; 8]);
            g[..n - full].copy_from_slice(&gate[full..n]);
            u[..n - full].copy_from_slice(&up[full..n]);
            _mm256_storeu_ps(o.as_mut_ptr(), silu_times8(_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr())));
            out[full..n].copy_from_slice(&o[..n - full]);
        }
    }

    /// silu(g) · u with `e = e^-|g|` (never overflows): sigmoid(g) is `1 / (1 + e)` for
    /// g >= 0 and `e / (1 + e)` for g < 0.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn silu_times8(g: __m256, u: __m256) -> __m256 {
        let sign = _mm256_set1_ps(-0.0);
        let e = exp_nonpositive(_mm256_or_ps(g, sign));
        let numerator = _mm256_blendv_ps(_mm256_set1_ps(1.0), e, g);
        let sigmoid = _mm256_div_ps(numerator, _mm256_add_ps(_mm256_set1_ps(1.0), e));
        _mm256_mul_ps(_mm256_mul_ps(g, sigmoid), u)
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

    #[test]
    fn gelu_tanh_matches_the_formula() {
        for x in [-6.0f32, -1.5, -0.3, 0.0, 0.7, 2.0, 9.0] {
            let x64 = x as f64;
            let want =
                0.5 * x64 * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3))).tanh());
            assert!((gelu_tanh(x) as f64 - want).abs() <= 1e-7 * want.abs().max(1e-3), "gelu({x})");
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
