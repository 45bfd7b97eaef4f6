//! Requantization as llama.cpp's `llama-quantize --allow-requantize` does it, byte for byte,
//! for the presets a `llama` model is usually downloaded in (Q4_K_M, Q5_K_M, Q6_K, Q8_0): each
//! tensor widened to f32 as ggml does (`source`), its type chosen by llama.cpp's rules
//! (`preset`), then quantized by our own ports of ggml's reference quantizers (`legacy` for the
//! 32-value blocks, `kquants` for the 256-value super-blocks), with no importance matrix.
//!
//! It exists so CI can rebuild the files llama.cpp would make from the model cache's SmolLM2
//! Q4_1 without building llama.cpp: `core/tests/smollm2_requant.rs` holds [`Requantized::to_bytes`]
//! to the sha256 of llama-quantize's own output file, whole. Not a stable API yet: hidden from
//! the docs.
//!
//! Scope: dense `llama` models; MoE files and the 70B-specific rule are refused, not guessed.

mod kquants;
mod legacy;
mod preset;
mod source;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use crate::gguf::{GgmlType, GgufFile, Value};
use crate::gguf_write::{self, TensorToWrite};

pub use preset::Preset;
use preset::{llama_cpp_order, Planner, TensorShape};

/// `GGML_QNT_VERSION`, written as `general.quantization_version`.
const QUANTIZATION_VERSION: u32 = 2;

/// Why a file could not be requantized.
#[derive(Debug, thiserror::Error)]
pub enum RequantizeError {
    #[error(transparent)]
    Source(#[from] crate::error::Error),
    #[error("cannot requantize {path}: {reason}")]
    UnsupportedModel { path: PathBuf, reason: String },
    #[error("cannot requantize tensor `{tensor}`: reading {from} tensors is not supported")]
    UnsupportedSourceType { tensor: String, from: GgmlType },
    #[error("cannot requantize tensor `{tensor}`: quantizing to {to} is not supported")]
    UnsupportedTargetType { tensor: String, to: GgmlType },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// One tensor of the requantized file.
#[derive(Debug, Clone)]
pub struct QuantizedTensor {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    pub data: Vec<u8>,
}

/// A requantized model: the source's metadata (with the new file type) and its tensors, in the
/// order llama-quantize writes them, so [`Requantized::to_bytes`] is llama-quantize's file.
#[derive(Debug, Clone)]
pub struct Requantized {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<QuantizedTensor>,
}

impl Requantized {
    fn tensors_to_write(&self) -> Vec<TensorToWrite<'_>> {
        self.tensors.iter().map(|t| TensorToWrite { name: &t.name, dims: &t.dims, ty: t.ty, data: &t.data }).collect()
    }

    /// The GGUF file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        gguf_write::to_bytes(&self.metadata, &self.tensors_to_write())
    }

    /// Writes the model as a GGUF file, atomically (a temporary file renamed into place), so
    /// a reader never sees half a file.
    pub fn write(&self, path: &Path) -> Result<(), RequantizeError> {
        gguf_write::write_file(path, &self.metadata, &self.tensors_to_write())
            .map_err(|source| RequantizeError::Write { path: path.to_path_buf(), source })
    }
}

/// `values` (a whole number of `ty`'s blocks, row after row) quantized to `ty` as ggml's
/// reference quantizer does it; `None` for a type with no quantizer here.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Option<Vec<u8>> {
    let (block_values, block_bytes) = ty.block_layout();
    let mut out = Vec::with_capacity(values.len() / block_values * block_bytes);
    match ty {
        GgmlType::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
        GgmlType::F16 => out.extend(values.iter().flat_map(|&v| crate::f16::f32_to_f16(v).to_le_bytes())),
        GgmlType::Q8_0 => legacy::quantize_q8_0(values, &mut out),
        GgmlType::Q5_0 => legacy::quantize_q5_0(values, &mut out),
        GgmlType::Q5_1 => legacy::quantize_q5_1(values, &mut out),
        GgmlType::Q4K => kquants::quantize_q4_k(values, &mut out),
        GgmlType::Q5K => kquants::quantize_q5_k(values, &mut out),
        GgmlType::Q6K => kquants::quantize_q6_k(values, &mut out),
        _ => return None,
    }
    Some(out)
}

/// `source` requantized to `preset`, as llama-quantize would write it.
pub fn requantize(source: &GgufFile, preset: Preset) -> Result<Requantized, RequantizeError> {
    let layers = check_supported(source)?;
    let mut order: Vec<_> = source.tensors().iter().collect();
    order.sort_by(|a, b| llama_cpp_order(&a.name, &b.name));
    let shapes: Vec<_> = order.iter().map(|t| TensorShape { name: &t.name, dims: &t.dims, ty: t.ty }).collect();
    let mut planner = Planner::new(preset, &shapes, layers);
    let mut tensors = Vec::with_capacity(shapes.len());
    for shape in &shapes {
        let target = planner.target_type(shape);
        let (_, bytes) = source.tensor_bytes(shape.name)?;
        tensors.push(QuantizedTensor {
            name: shape.name.to_string(),
            dims: shape.dims.to_vec(),
            ty: target,
            data: convert(shape, bytes, target)?,
        });
    }
    Ok(Requantized { metadata: requantized_metadata(source, preset), tensors })
}

/// A tensor's bytes in `target`: copied when the type does not change (as llama-quantize
/// does, so a Q8_0 source tensor is not rounded twice), else widened to f32 and quantized.
fn convert(shape: &TensorShape, bytes: &[u8], target: GgmlType) -> Result<Vec<u8>, RequantizeError> {
    if target == shape.ty {
        return Ok(bytes.to_vec());
    }
    let values = source::to_f32(shape.ty, bytes)
        .map_err(|from| RequantizeError::UnsupportedSourceType { tensor: shape.name.to_string(), from })?;
    quantize(target, &values)
        .ok_or_else(|| RequantizeError::UnsupportedTargetType { tensor: shape.name.to_string(), to: target })
}

/// The layer count, after refusing the models whose llama.cpp rules this does not port.
fn check_supported(source: &GgufFile) -> Result<usize, RequantizeError> {
    let refuse = |reason: String| RequantizeError::UnsupportedModel { path: source.path().to_path_buf(), reason };
    let arch = source.require_str("general.architecture")?;
    if arch != "llama" {
        return Err(refuse(format!("architecture `{arch}` (only `llama` is supported)")));
    }
    if source.get("llama.expert_count").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(refuse("mixture-of-experts models are not supported".into()));
    }
    let layers = source.require_u64("llama.block_count")? as usize;
    if layers == 80 {
        // llama.cpp gives 70B models extra attn_v bits; that rule is not ported.
        return Err(refuse("80-layer (70B) models are not supported".into()));
    }
    Ok(layers)
}

/// The source's metadata in its order, changed as llama-quantize changes it: the quantization
/// version and the new file type set (ggml's `gguf_set_val_*` removes a key and appends it, so
/// both move to the end, in that order), and no split keys (the output is one file).
fn requantized_metadata(source: &GgufFile, preset: Preset) -> Vec<(String, Value)> {
    let mut metadata: Vec<_> = source
        .metadata_keys()
        .iter()
        .filter(|key| {
            !matches!(key.as_str(), "general.file_type" | "general.quantization_version") && !key.starts_with("split.")
        })
        .filter_map(|key| Some((key.clone(), source.get(key)?.clone())))
        .collect();
    metadata.push(("general.quantization_version".into(), Value::U32(QUANTIZATION_VERSION)));
    metadata.push(("general.file_type".into(), Value::U32(preset.file_type())));
    metadata
}
