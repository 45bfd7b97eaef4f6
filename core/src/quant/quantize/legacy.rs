//! The 32-value block quantizers llama.cpp's presets fall back to when a row is not a multiple
//! of 256 (Q5_0, Q5_1, Q8_0), as ggml's reference `quantize_row_*_ref` computes them without
//! an importance matrix: the same float operations in the same order, so the bytes match.

use crate::f16::f32_to_f16;

pub const BLOCK: usize = 32;

/// Q8_0: one f16 scale (`amax / 127`) and 32 signed bytes, rounded half away from zero.
pub fn quantize_q8_0(x: &[f32], out: &mut Vec<u8>) {
    for block in x.chunks_exact(BLOCK) {
        let amax = block.iter().fold(0.0f32, |amax, v| if amax > v.abs() { amax } else { v.abs() });
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
        // `roundf` then a conversion to int8: |x * id| <= 127 (plus rounding), so it fits.
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
}

/// Q5_0: scale `max / -16` (`max` the value of largest magnitude, the first one on a tie),
/// 5-bit codes `x / d + 16.5` truncated and capped at 31; low nibbles then the fifth bits.
pub fn quantize_q5_0(x: &[f32], out: &mut Vec<u8>) {
    for block in x.chunks_exact(BLOCK) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in block {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        // C truncates `(int8_t)(x + 16.5f)` toward zero; the value is in [0, 33).
        let codes: [u8; BLOCK] = std::array::from_fn(|j| ((block[j] * id + 16.5) as i32).min(31) as u8);
        out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
        push_five_bit_codes(&codes, out);
    }
}

/// Q5_1: scale `(max - min) / 31` and offset `min`, codes `(x - min) / d + 0.5` truncated.
pub fn quantize_q5_1(x: &[f32], out: &mut Vec<u8>) {
    for block in x.chunks_exact(BLOCK) {
        let (mut min, mut max) = (f32::MAX, -f32::MAX);
        for &v in block {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let codes: [u8; BLOCK] = std::array::from_fn(|j| ((block[j] - min) * id + 0.5) as i32 as u8);
        out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
        out.extend_from_slice(&f32_to_f16(min).to_le_bytes());
        push_five_bit_codes(&codes, out);
    }
}

/// ggml's Q5 layout after the scale(s): the 32 fifth bits as a little-endian u32 (bit j for
/// value j), then 16 bytes of low nibbles (value j low, value j + 16 high).
fn push_five_bit_codes(codes: &[u8; BLOCK], out: &mut Vec<u8>) {
    let high_bits = codes.iter().enumerate().fold(0u32, |qh, (j, &c)| qh | (u32::from(c >> 4) & 1) << j);
    out.extend_from_slice(&high_bits.to_le_bytes());
    out.extend((0..BLOCK / 2).map(|j| (codes[j] & 0x0f) | ((codes[j + BLOCK / 2] & 0x0f) << 4)));
}
