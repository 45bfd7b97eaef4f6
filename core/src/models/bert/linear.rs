//! Dense layers in f32: `y = x · Wᵀ + b` with `W` row-major `[out_features, in_features]`, the
//! layout safetensors stores, so every output is a dot product of two contiguous rows.
//!
//! The kernel is plain Rust written for auto-vectorisation: each dot product keeps `LANES`
//! independent partial sums, so the compiler can put them in one SIMD register without
//! reordering float additions (which it may not do on its own). A micro-tile of
//! `TILE_ROWS × TILE_COLS` outputs shares every load of `x` and `W` across several sums, and
//! the weight matrix is walked in blocks that stay in L2 while all rows of `x` pass over them.
//! A second copy is compiled for AVX2+FMA and picked at run time, because the crate is built
//! for the baseline x86-64 target.
//!
//! Every output element is summed in the same order whatever tile or task computes it, so a
//! row's result does not depend on which other rows share the batch.

use std::sync::{Mutex, PoisonError};

use crate::threadpool::ThreadPool;

/// Partial sums per dot product: one 256-bit register of f32.
const LANES: usize = 8;
/// Rows of `x` per micro-tile.
const TILE_ROWS: usize = 4;
/// Rows of `W` per micro-tile. 4 × 2 accumulators plus the 6 loaded vectors fit the 16 AVX2 registers.
const TILE_COLS: usize = 2;
/// Bytes of `W` walked per block: small enough to stay in L2 while every row of the task reuses it.
const WEIGHT_BLOCK_BYTES: usize = 128 * 1024;
/// Upper bound on rows per parallel task, so a large batch splits into enough tasks to balance
/// across threads on a busy machine.
const MAX_ROWS_PER_TASK: usize = 64;

/// A fully connected layer.
pub(super) struct Linear {
    /// `[out_features, in_features]`, row-major.
    weight: Vec<f32>,
    bias: Vec<f32>,
    in_features: usize,
}

impl Linear {
    /// `weight` is `[bias.len(), in_features]` row-major.
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, in_features: usize) -> Self {
        assert!(in_features > 0 && !bias.is_empty(), "a linear layer needs inputs and outputs");
        assert_eq!(weight.len(), bias.len() * in_features, "weight shape does not match the bias");
        Self { weight, bias, in_features }
    }

    /// Width of each output row.
    pub fn out_features(&self) -> usize {
        self.bias.len()
    }

    /// `out[m, out_features] = x[m, in_features] · Wᵀ + b`, spread over `pool` by rows of `x`.
    pub fn forward(&self, pool: &ThreadPool, x: &[f32], out: &mut [f32]) {
        let (k, n) = (self.in_features, self.out_features());
        assert!(x.len().is_multiple_of(k), "input is not a whole number of rows");
        let m = x.len() / k;
        assert_eq!(out.len(), m * n, "output buffer does not match the input rows");
        if m == 0 {
            return;
        }
        let rows_per_task = m.div_ceil(pool.n_threads()).next_multiple_of(TILE_ROWS).min(MAX_ROWS_PER_TASK);
        // One lock per task's disjoint slice of `out`: uncontended, and it keeps the hand-off safe.
        let out_chunks: Vec<Mutex<&mut [f32]>> = out.chunks_mut(rows_per_task * n).map(Mutex::new).collect();
        pool.run(out_chunks.len(), &|task| {
            let mut out_rows = out_chunks[task].lock().unwrap_or_else(PoisonError::into_inner);
            let first_row = task * rows_per_task;
            let rows = out_rows.len() / n;
            let x_rows = &x[first_row * k..(first_row + rows) * k];
            matmul_transposed(x_rows, &self.weight, k, Some(&self.bias), &mut out_rows);
        });
    }
}

/// `out[m, n] = x[m, k] · w[n, k]ᵀ (+ bias[n])` on the calling thread, with the fastest compiled
/// copy of the kernel this CPU can run.
pub(super) fn matmul_transposed(x: &[f32], w: &[f32], k: usize, bias: Option<&[f32]>, out: &mut [f32]) {
    assert!(k > 0 && x.len().is_multiple_of(k) && w.len().is_multiple_of(k), "operands are not whole rows of {k}");
    assert_eq!(out.len(), (x.len() / k) * (w.len() / k), "output buffer does not match the operands");
    assert!(bias.is_none_or(|b| b.len() == w.len() / k), "bias length differs from the output width");
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx2_fma() {
        // SAFETY: the CPU supports the features this copy was compiled for.
        return unsafe { matmul_transposed_avx2_fma(x, w, k, bias, out) };
    }
    matmul_blocked::<false>(x, w, k, bias, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn matmul_transposed_avx2_fma(x: &[f32], w: &[f32], k: usize, bias: Option<&[f32]>, out: &mut [f32]) {
    matmul_blocked::<true>(x, w, k, bias, out)
}

/// The kernel behind [`matmul_transposed`], cache-blocked over `w`. `FUSED` selects fused
/// multiply-add, which is only fast where the CPU has it.
#[inline(always)]
fn matmul_blocked<const FUSED: bool>(x: &[f32], w: &[f32], k: usize, bias: Option<&[f32]>, out: &mut [f32]) {
    let n = w.len() / k;
    let m = x.len() / k;
    let bias_at = |col: usize| bias.map_or(0.0, |b| b[col]);
    let block_cols = (WEIGHT_BLOCK_BYTES / (k * size_of::<f32>())).max(TILE_COLS).next_multiple_of(TILE_COLS);
    for block_start in (0..n).step_by(block_cols) {
        let block_end = (block_start + block_cols).min(n);
        for row in (0..m).step_by(TILE_ROWS) {
            let rows = TILE_ROWS.min(m - row);
            for col in (block_start..block_end).step_by(TILE_COLS) {
                let cols = TILE_COLS.min(block_end - col);
                let x_tile = &x[row * k..(row + rows) * k];
                let w_tile = &w[col * k..(col + cols) * k];
                if rows == TILE_ROWS && cols == TILE_COLS {
                    let sums = dot_tile::<TILE_ROWS, TILE_COLS, FUSED>(x_tile, w_tile, k);
                    for (r, row_sums) in sums.iter().enumerate() {
                        for (c, sum) in row_sums.iter().enumerate() {
                            out[(row + r) * n + col + c] = sum + bias_at(col + c);
                        }
                    }
                } else {
                    // Ragged edges go one element at a time through the same summation order.
                    for r in 0..rows {
                        for c in 0..cols {
                            let [[sum]] = dot_tile::<1, 1, FUSED>(&x_tile[r * k..], &w_tile[c * k..], k);
                            out[(row + r) * n + col + c] = sum + bias_at(col + c);
                        }
                    }
                }
            }
        }
    }
}

/// Dot products of the first `R` rows of `x` with the first `C` rows of `w` (rows of length `k`).
#[inline(always)]
fn dot_tile<const R: usize, const C: usize, const FUSED: bool>(x: &[f32], w: &[f32], k: usize) -> [[f32; C]; R] {
    let x_rows: [&[f32]; R] = std::array::from_fn(|r| &x[r * k..(r + 1) * k]);
    let w_rows: [&[f32]; C] = std::array::from_fn(|c| &w[c * k..(c + 1) * k]);
    let x_chunks = x_rows.map(|row| row.as_chunks::<LANES>().0);
    let w_chunks = w_rows.map(|row| row.as_chunks::<LANES>().0);
    let n_chunks = k / LANES;

    let mut acc = [[[0.0f32; LANES]; C]; R];
    for i in 0..n_chunks {
        let xs: [&[f32; LANES]; R] = std::array::from_fn(|r| &x_chunks[r][i]);
        let ws: [&[f32; LANES]; C] = std::array::from_fn(|c| &w_chunks[c][i]);
        for r in 0..R {
            for c in 0..C {
                for lane in 0..LANES {
                    acc[r][c][lane] = multiply_add::<FUSED>(xs[r][lane], ws[c][lane], acc[r][c][lane]);
                }
            }
        }
    }

    let tail = n_chunks * LANES..k;
    std::array::from_fn(|r| {
        std::array::from_fn(|c| {
            let mut sum = sum_lanes(&acc[r][c]);
            for i in tail.clone() {
                sum = multiply_add::<FUSED>(x_rows[r][i], w_rows[c][i], sum);
            }
            sum
        })
    })
}

/// Pairwise sum of the partial sums, in a fixed order.
#[inline(always)]
fn sum_lanes(lanes: &[f32; LANES]) -> f32 {
    let quads: [f32; 4] = std::array::from_fn(|i| lanes[i] + lanes[i + 4]);
    (quads[0] + quads[2]) + (quads[1] + quads[3])
}

#[inline(always)]
fn multiply_add<const FUSED: bool>(a: f32, b: f32, acc: f32) -> f32 {
    if FUSED {
        a.mul_add(b, acc)
    } else {
        a * b + acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn pseudo_random(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect()
    }

    fn naive_f64(x: &[f32], w: &[f32], bias: &[f32], k: usize) -> Vec<f64> {
        let n = bias.len();
        let m = x.len() / k;
        let mut out = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k).map(|p| x[i * k + p] as f64 * w[j * k + p] as f64).sum();
                out[i * n + j] = dot + bias[j] as f64;
            }
        }
        out
    }

    /// Odd sizes exercise the ragged tile edges, the scalar tail of `k`, and several weight
    /// blocks and tasks.
    #[test]
    fn matches_naive_f64_matmul() {
        let pool = ThreadPool::new(3).expect("start the thread pool");
        for (m, k, n) in [(1, 8, 1), (13, 37, 11), (70, 384, 9), (5, 1536, 130), (130, 3, 2)] {
            let x = pseudo_random(m * k, 1);
            let w = pseudo_random(n * k, 2);
            let bias = pseudo_random(n, 3);
            let expected = naive_f64(&x, &w, &bias, k);
            let layer = Linear::new(w, bias, k);
            let mut out = vec![f32::NAN; m * n];
            layer.forward(&pool, &x, &mut out);
            for (i, (got, want)) in out.iter().zip(&expected).enumerate() {
                let tolerance = 1e-5 * (k as f64).sqrt() * (1.0 + want.abs());
                assert!((*got as f64 - want).abs() <= tolerance, "m={m} k={k} n={n} element {i}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_and_in_a_batch() {
        let pool = ThreadPool::new(2).expect("start the thread pool");
        let (m, k, n) = (23, 100, 17);
        let x = pseudo_random(m * k, 4);
        let layer = Linear::new(pseudo_random(n * k, 5), pseudo_random(n, 6), k);
        let mut batch = vec![0.0; m * n];
        layer.forward(&pool, &x, &mut batch);
        for row in [0, 5, 22] {
            let mut alone = vec![0.0; n];
            layer.forward(&pool, &x[row * k..(row + 1) * k], &mut alone);
            assert_eq!(alone, batch[row * n..(row + 1) * n], "row {row}");
        }
    }
}
