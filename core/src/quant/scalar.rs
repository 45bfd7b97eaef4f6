//! Portable kernels: the fallback on CPUs without AVX2, and the plain statement of what the
//! SIMD kernels compute.

use super::activations::Q8Block;
use super::blocks::QuantFormat;
use super::interleaved::{self, LANES};
use super::regroup::{self, Epilogue};
use super::TILE;

/// `out[r][j] = weight row j of the group · activation row r` (see `avx2::group_tile`).
pub fn group_tile(
    format: QuantFormat,
    group: &[u8],
    n_blocks: usize,
    acts: &[Q8Block],
    out: &mut [[f32; LANES]; TILE],
) {
    if format.is_regrouped() {
        return regrouped_group_tile(format, group, n_blocks, acts, out);
    }
    let block_bytes = format.group_block_bytes();
    for (act_row, results) in acts.chunks_exact(n_blocks.max(1)).zip(out.iter_mut()) {
        for (lane, result) in results.iter_mut().enumerate() {
            let mut sum = 0f32;
            for (block, act) in group.chunks_exact(block_bytes).zip(act_row) {
                let w = interleaved::decode(format, block, lane);
                let dot: i32 = w.q.iter().zip(&act.q).map(|(&a, &b)| a as i32 * b as i32).sum();
                // The SIMD kernels' float operations, fused multiply-adds included.
                sum = match format {
                    QuantFormat::Q8_0 => (w.d * act.d).mul_add(dot as f32, sum),
                    _ => sum + (w.d * act.d).mul_add(dot as f32, w.m * act.s),
                };
            }
            *result = sum;
        }
    }
}

/// The regrouped formats (`regroup`): integer dots of the two 16-weight halves, combined with
/// the integer sub-scales, then the format's float epilogue.
fn regrouped_group_tile(
    format: QuantFormat,
    group: &[u8],
    n_blocks: usize,
    acts: &[Q8Block],
    out: &mut [[f32; LANES]; TILE],
) {
    for (act_row, results) in acts.chunks_exact(n_blocks.max(1)).zip(out.iter_mut()) {
        for (lane, result) in results.iter_mut().enumerate() {
            let mut sum = 0f32;
            for (b, act) in act_row.iter().enumerate() {
                let w = regroup::decode(format, group, n_blocks, b, lane);
                let [lo, hi] = regroup::half_dots(&w.q, &act.q);
                let dot = (w.sc[0] * lo + w.sc[1] * hi) as f32;
                let scale = w.d * act.d;
                sum = match format.epilogue() {
                    Epilogue::Offset => sum + scale.mul_add(dot, w.m * act.s),
                    Epilogue::Plain => scale.mul_add(dot, sum),
                    Epilogue::HalfMins => {
                        let half_sum = |r: std::ops::Range<usize>| act.q[r].iter().map(|&a| a as i32).sum::<i32>();
                        let mins = w.mins[0] * half_sum(0..16) + w.mins[1] * half_sum(16..32);
                        sum + scale.mul_add(dot, w.m * (act.d * mins as f32))
                    }
                };
            }
            *result = sum;
        }
    }
}
