//! A source tensor widened to f32 exactly as ggml's `to_float` does it (`dequantize_row_*`),
//! the first step of llama-quantize's requantization. Only the types a source file for the
//! presets plausibly holds are read; any other is an error naming it.

use crate::f16::f16_to_f32;
use crate::gguf::GgmlType;

/// Every value of a tensor of type `ty` held in `bytes`, in order. `Err` names the type when
/// it is not one this reads.
pub fn to_f32(ty: GgmlType, bytes: &[u8]) -> Result<Vec<f32>, GgmlType> {
    let half = |b: &[u8]| f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    let mut out = Vec::with_capacity(bytes.len() * 2);
    match ty {
        GgmlType::F32 => out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(half)),
        GgmlType::BF16 => {
            out.extend(bytes.chunks_exact(2).map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)))
        }
        GgmlType::Q8_0 => {
            for block in bytes.chunks_exact(34) {
                let d = half(block);
                out.extend(block[2..].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Q4_0 => {
            for block in bytes.chunks_exact(18) {
                let d = half(block);
                let qs = &block[2..];
                out.extend(qs.iter().map(|&q| ((q & 0xf) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for block in bytes.chunks_exact(20) {
                let (d, m) = (half(block), half(&block[2..]));
                let qs = &block[4..];
                // `x * d + m` as two roundings: ggml-base is compiled without FMA contraction.
                out.extend(qs.iter().map(|&q| (q & 0xf) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        other => return Err(other),
    }
    Ok(out)
}
