//! The ggml block formats our kernels read (regrouped at load by [`super::interleaved`]).
//!
//! Every supported format is expressed the same way: a block holds 32 small integers `q[i]`
//! and two scales, and weight `i` is `d * q[i] + m`. Q4_1 stores `m` (its minimum); Q4_0 stores
//! nibbles that mean `q - 8`, which is the same as `m = -8 d` (exact in f32: both terms are
//! small multiples of `d`); Q8_0 has signed `q` and `m = 0`. Writing Q4_0 like Q4_1 lets both
//! share one kernel that multiplies unsigned nibbles by the signed activations.
//!
//! ggml layouts of one block: Q4_0 `{d: f16, qs: [u8; 16]}`, Q4_1 `{d: f16, m: f16, qs: [u8; 16]}`
//! where byte `j` holds weight `j` in its low nibble and weight `j + 16` in its high nibble;
//! Q8_0 `{d: f16, qs: [i8; 32]}`.

/// Weights per quantized block (all supported formats).
pub const BLOCK: usize = 32;

/// A supported block-quantized weight format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantFormat {
    Q4_0,
    Q4_1,
    Q8_0,
    // Regrouped through `regroup` (their own layouts and epilogues).
    Q5_0,
    Q5_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    IQ4NL,
    IQ4XS,
}

/// The `MIN` const parameter of the `Offset` kernels (`group_kernel`, `vnni512`): how a format's
/// per-block scale `d` and min `m` come from its fields, and which format a kernel instance
/// serves. Q5_0 shares the 5-bit unpacking but has no min: its stored values are `q + 16` and
/// its epilogue is `Plain` (`regroup`).
pub(crate) mod offset {
    use super::QuantFormat;

    pub(crate) const PLAIN_BIAS_16: u8 = 0; // Q5_0: `Σ (q_w - 16) a`, then `fma(d_w d_a, dot, acc)`
    pub(crate) const MIN_STORED: u8 = 1; // Q5_1: `m` stored as f16
    pub(crate) const MIN_K: u8 = 2; // Q4_K, Q5_K: `d = d_super sc`, `m = -dmin mn`

    /// The format `offset_*::<MIN, FIVE>` computes. The kernels take their format from their
    /// const parameters rather than as an argument, so every layout offset (`const fn`s of the
    /// format) folds into the code: read at run time, each block spent about twenty scalar
    /// instructions and branches on `scale_fields_at` and `group_block_bytes`.
    #[inline(always)]
    pub(crate) const fn format(min: u8, five: bool) -> QuantFormat {
        match (min, five) {
            (PLAIN_BIAS_16, _) => QuantFormat::Q5_0,
            (MIN_STORED, _) => QuantFormat::Q5_1,
            (_, false) => QuantFormat::Q4K,
            (_, true) => QuantFormat::Q5K,
        }
    }
}

/// One decoded block: weight `i` is `d * q[i] + m`.
pub struct DecodedBlock {
    pub d: f32,
    pub m: f32,
    pub q: [i8; BLOCK],
}

impl QuantFormat {
    /// Bytes one block of 32 weights takes in the file (and in our copy of it); Q4_0, Q4_1
    /// and Q8_0 only (the regrouped formats: `regroup`).
    #[inline]
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
            _ => panic!("block_bytes of a regrouped format"),
        }
    }
}

/// Converts IEEE half-precision bits to f32 exactly (every f16 is representable in f32).
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = if bits & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exponent = u32::from((bits >> 10) & 0x1f);
    let mantissa = u32::from(bits & 0x3ff);
    match exponent {
        // Zero and subnormals: mantissa * 2^-24, exact in f32.
        0 => sign * (mantissa as f32 * (1.0 / 16_777_216.0)),
        0x1f if mantissa == 0 => sign * f32::INFINITY,
        0x1f => f32::NAN,
        // Rebias the exponent (15 -> 127) and widen the mantissa (10 -> 23 bits).
        _ => sign * f32::from_bits(((exponent + 112) << 23) | (mantissa << 13)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_known_values() {
        let cases: [(u16, f32); 8] = [
            (0x0000, 0.0),
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x7bff, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x8001, -5.960_464_5e-8),
            (0x7c00, f32::INFINITY),
        ];
        for (bits, want) in cases {
            assert_eq!(f16_to_f32(bits), want, "bits {bits:#06x}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}
