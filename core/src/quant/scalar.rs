//! Portable kernels: the fallback on CPUs without AVX2, and the plain statement of what the
//! SIMD kernels compute.

use super::activations::Q8Block;
use super::blocks::QuantFormat;
use super::interleaved::{self, LANES};
use super::TILE;

/// `out[r][j] = weight row j of the group · activation row r` (see `avx2::group_tile`).
pub fn group_tile(
    format: QuantFormat,
    group: &[u8],
    n_blocks: usize,
    acts: &[Q8Block],
    out: &mut [[f32; LANES]; TILE],
) {
    let block_bytes = format.group_block_bytes();
    for (act_row, results) in acts.chunks_exact(n_blocks.max(1)).zip(out.iter_mut()) {
        for (lane, result) in results.iter_mut().enumerate() {
            let mut sum = 0f32;
            for (block, act) in group.chunks_exact(block_bytes).zip(act_row) {
                let w = interleaved::decode(format, block, lane);
                let dot: i32 = w.q.iter().zip(&act.q).map(|(&a, &b)| a as i32 * b as i32).sum();
                sum += w.d * act.d * dot as f32 + w.m * act.s;
            }
            *result = sum;
        }
    }
}
