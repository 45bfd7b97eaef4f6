//! IEEE half-precision conversion for the KV cache, which stores K and V as f16 (as llama.cpp
//! does) to halve its memory and the bytes attention reads.
//!
//! The scalar conversions round to nearest even, exactly like the F16C instructions, so a
//! cache written on one code path reads back the same on the other. `f32` → `f16` overflows
//! to infinity and flushes values below the smallest subnormal to signed zero.

/// Rounds an f32 to the nearest f16 (ties to even); returns its bits.
pub fn f32_to_f16(value: f32) -> u16 {
    let bits = value.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exponent = ((bits >> 23) & 0xff) as i32;
    let mantissa = bits & 0x7f_ffff;
    if exponent == 0xff {
        // Infinity stays infinity; NaN stays a quiet NaN with its top payload bits (as F16C).
        let nan = if mantissa != 0 { 0x200 | (mantissa >> 13) as u16 } else { 0 };
        return sign | 0x7c00 | nan;
    }
    // Exponent re-biased for f16 (bias 15 instead of 127).
    let e = exponent - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // An f16 subnormal (or zero): mantissa × 2^-24, from the f32's full 24-bit significand.
        let shift = (14 - e) as u32;
        if shift > 24 {
            return sign;
        }
        let significand = mantissa | 0x80_0000;
        return sign | round_shift(significand, shift) as u16;
    }
    // Normal: a carry out of the mantissa correctly bumps the exponent (up to infinity).
    let truncated = ((e as u32) << 10) | (mantissa >> 13);
    let remainder = mantissa & 0x1fff;
    let round_up = remainder > 0x1000 || (remainder == 0x1000 && truncated & 1 == 1);
    sign | (truncated + round_up as u32) as u16
}

/// `value >> shift` rounded to nearest, ties to even (`1 <= shift <= 24`).
fn round_shift(value: u32, shift: u32) -> u32 {
    let truncated = value >> shift;
    let remainder = value & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    truncated + (remainder > half || (remainder == half && truncated & 1 == 1)) as u32
}

/// Widens f16 bits to f32 (exact: every f16 is an f32).
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits & 0x8000) << 16;
    let exponent = u32::from((bits >> 10) & 0x1f);
    let mantissa = u32::from(bits & 0x3ff);
    match exponent {
        0 => {
            // Zero and subnormals: mantissa × 2^-24.
            let magnitude = mantissa as f32 * (1.0 / 16_777_216.0);
            f32::from_bits(sign | magnitude.to_bits())
        }
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (mantissa << 13)),
        _ => f32::from_bits(sign | ((exponent + 112) << 23) | (mantissa << 13)),
    }
}

/// Whether the F16C (and AVX) conversion instructions can be used.
#[cfg(target_arch = "x86_64")]
pub fn has_f16c() -> bool {
    use std::sync::OnceLock;
    static F16C: OnceLock<bool> = OnceLock::new();
    *F16C.get_or_init(|| is_x86_feature_detected!("avx") && is_x86_feature_detected!("f16c"))
}

/// Converts `src` into `dst` (equal lengths), with F16C when the CPU has it.
pub fn f32_slice_to_f16(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: F16C and AVX were detected.
        unsafe { f32_slice_to_f16_f16c(src, dst) };
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f32_to_f16(s);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f32_slice_to_f16_f16c(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let full = src.len() / 8 * 8;
    for i in (0..full).step_by(8) {
        // SAFETY: i + 8 <= len for both slices.
        let x = _mm256_loadu_ps(src.as_ptr().add(i));
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
        _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
    }
    for i in full..src.len() {
        dst[i] = f32_to_f16(src[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_f16_round_trips_through_f32() {
        for bits in 0..=u16::MAX {
            let wide = f16_to_f32(bits);
            if wide.is_nan() {
                assert!(f16_to_f32(f32_to_f16(wide)).is_nan());
            } else {
                assert_eq!(f32_to_f16(wide), bits, "f16 {bits:#06x} -> {wide}");
            }
        }
    }

    #[test]
    fn rounds_to_nearest_even_and_saturates() {
        assert_eq!(f16_to_f32(f32_to_f16(1.0 + 1.0 / 4096.0)), 1.0); // tie below: even stays
        assert_eq!(f16_to_f32(f32_to_f16(1.0 + 3.0 / 4096.0)), 1.0 + 4.0 / 4096.0); // tie: to even
        assert_eq!(f32_to_f16(70_000.0), 0x7c00);
        assert_eq!(f32_to_f16(-1e-10), 0x8000);
        assert_eq!(f16_to_f32(f32_to_f16(5.960_464_5e-8)), 5.960_464_5e-8); // smallest subnormal
        assert_eq!(f16_to_f32(f32_to_f16(65504.0)), 65504.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn f16c_matches_the_scalar_conversion() {
        if !has_f16c() {
            return;
        }
        // Every f16 value, the points halfway between neighbours, and a spread of magnitudes.
        let mut values: Vec<f32> = Vec::new();
        for bits in 0..0x7c00u16 {
            let a = f16_to_f32(bits);
            let b = f16_to_f32(bits + 1);
            values.extend([a, -a, (a + b) / 2.0, -(a + b) / 2.0, a * 1.000_1]);
        }
        values.extend([f32::INFINITY, f32::NEG_INFINITY, 1e-30, -1e30, f32::MIN_POSITIVE, 1e-45]);
        let mut simd = vec![0u16; values.len()];
        f32_slice_to_f16(&values, &mut simd);
        for (&v, &h) in values.iter().zip(&simd) {
            assert_eq!(h, f32_to_f16(v), "{v:e}");
        }
    }
}
