//! Portable kernels: the fallback on CPUs without AVX2, and the plain statement of what the
//! SIMD kernels compute.

use super::activations::Q8Block;
use super::blocks::QuantFormat;

/// `out[r] = w_row · activation row r` for the `out.len()` rows stacked in `acts`.
pub fn dot_tile(format: QuantFormat, w_row: &[u8], acts: &[Q8Block], out: &mut [f32]) {
    let n_blocks = w_row.len() / format.block_bytes();
    for (act_row, result) in acts.chunks_exact(n_blocks).zip(out.iter_mut()) {
        *result = dot_row(format, w_row, act_row);
    }
}

fn dot_row(format: QuantFormat, w_row: &[u8], act_row: &[Q8Block]) -> f32 {
    let mut scaled = 0f32;
    let mut offset = 0f32;
    for (bytes, act) in w_row.chunks_exact(format.block_bytes()).zip(act_row) {
        let w = format.decode(bytes);
        let dot: i32 = w.q.iter().zip(&act.q).map(|(&a, &b)| a as i32 * b as i32).sum();
        scaled += w.d * act.d * dot as f32;
        if format.has_offset() {
            offset += w.m * act.s;
        }
    }
    scaled + offset
}
