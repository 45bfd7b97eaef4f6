//! Reads named f32 tensors out of `model.safetensors`, checking each one's shape, and accepting
//! F16 and BF16 files by widening them on load.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use super::linear::Linear;
use super::ops::LayerNorm;
use crate::error::{Error, Result};

/// A parsed safetensors file. Names are looked up relative to `prefix`, because some exports
/// nest the encoder under `bert.`.
pub(super) struct WeightFile<'data> {
    path: PathBuf,
    tensors: SafeTensors<'data>,
    prefix: &'static str,
}

impl<'data> WeightFile<'data> {
    /// Parses `bytes` (the contents of `path`) and finds the prefix under which `probe` lives.
    pub fn parse(path: &Path, bytes: &'data [u8], probe: &str) -> Result<Self> {
        let tensors = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::model_load(path, format!("not a valid safetensors file: {e}")))?;
        let prefix = ["", "bert."]
            .into_iter()
            .find(|prefix| tensors.tensor(&format!("{prefix}{probe}")).is_ok())
            .ok_or_else(|| Error::model_load(path, format!("no tensor `{probe}`: not a BERT model")))?;
        Ok(Self { path: path.to_path_buf(), tensors, prefix })
    }

    /// The tensor `name` as f32 values, which must have exactly `shape`.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let full_name = format!("{}{name}", self.prefix);
        let view = self
            .tensors
            .tensor(&full_name)
            .map_err(|_| Error::model_load(&self.path, format!("missing tensor `{full_name}`")))?;
        if view.shape() != shape {
            return Err(Error::model_load(
                &self.path,
                format!("tensor `{full_name}` has shape {:?}, expected {shape:?}", view.shape()),
            ));
        }
        let data = view.data();
        Ok(match view.dtype() {
            Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => data.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
                .collect(),
            other => {
                return Err(Error::model_load(
                    &self.path,
                    format!("tensor `{full_name}` has type {other:?}; only F32, F16 and BF16 are supported"),
                ))
            }
        })
    }

    /// The linear layers `{name}.weight` / `{name}.bias` for each of `names`, stacked into one layer
    /// (so Q, K and V become a single matmul).
    pub fn linear(&self, names: &[String], out_features: usize, in_features: usize) -> Result<Linear> {
        let mut weight = Vec::with_capacity(names.len() * out_features * in_features);
        let mut bias = Vec::with_capacity(names.len() * out_features);
        for name in names {
            weight.extend(self.tensor(&format!("{name}.weight"), &[out_features, in_features])?);
            bias.extend(self.tensor(&format!("{name}.bias"), &[out_features])?);
        }
        Ok(Linear::new(weight, bias, in_features))
    }

    /// The layer norm `{name}.weight` / `{name}.bias`.
    pub fn layer_norm(&self, name: &str, dim: usize, eps: f32) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.tensor(&format!("{name}.weight"), &[dim])?,
            bias: self.tensor(&format!("{name}.bias"), &[dim])?,
            eps,
        })
    }
}

/// IEEE half precision to f32 (exact: every f16 value is an f32 value).
fn f16_to_f32(bits: u16) -> f32 {
    let exponent = u32::from((bits >> 10) & 0x1f);
    let mantissa = u32::from(bits & 0x3ff);
    let magnitude = match exponent {
        0 => mantissa as f32 * 2.0f32.powi(-24),
        0x1f if mantissa == 0 => f32::INFINITY,
        0x1f => f32::NAN,
        // Rebias the exponent from 15 to 127 and widen the mantissa from 10 to 23 bits.
        _ => f32::from_bits(((exponent + 112) << 23) | (mantissa << 13)),
    };
    if bits & 0x8000 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    #[test]
    fn f16_conversion_covers_normals_subnormals_and_specials() {
        let cases = [
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x7bff, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x0000, 0.0),
            (0x7c00, f32::INFINITY),
            (0xfc00, f32::NEG_INFINITY),
        ];
        for (bits, expected) in cases {
            assert_eq!(f16_to_f32(bits), expected, "{bits:#06x}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}
