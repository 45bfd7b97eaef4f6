//! Reading an architecture's `{arch}.*` hyperparameters from GGUF metadata, with errors that
//! name the key.

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};
use crate::models::load_error;

/// Largest attention head size accepted from a file (real models use 64 to 256).
pub(crate) const MAX_HEAD_DIM: usize = 1024;

/// Why any RoPE scaling is refused (by architectures that implement none).
pub(crate) const ROPE_SCALING_WHY: &str = "RoPE scaling is not implemented yet (only `none`)";

/// Why a RoPE scaling type other than `none` or `linear` is refused (by architectures that
/// implement linear scaling and frequency factors).
const ROPE_SCALING_TYPE_WHY: &str = "only RoPE scaling `none`, `linear`, `longrope` (up to its original context) and \
     frequency factors (`rope_freqs.weight`, Llama 3) are implemented";

/// `{arch}.*` keys that change the numerics of features a forward does not implement: the key
/// suffix, the values that mean "off" (llama.cpp's defaults), and why any other is refused.
pub(crate) type MustBeOff = [(&'static str, &'static [f64], &'static str)];

/// The keys a plain pre-norm decoder (llama, phi3, qwen2, qwen3) refuses unless off: features
/// of other architectures (soft-capping, experts, Granite-style scales, a custom attention
/// scale). Each architecture refuses its own extra keys beside these.
pub(crate) const DENSE_DECODER_MUST_BE_OFF: &MustBeOff = &[
    ("attn_logit_softcapping", &[0.0], "logit soft-capping is not implemented for this architecture"),
    ("final_logit_softcapping", &[0.0], "logit soft-capping is not implemented for this architecture"),
    ("expert_count", &[0.0], "mixture-of-experts layers are not implemented"),
    ("expert_used_count", &[0.0], "mixture-of-experts layers are not implemented"),
    // Granite-style scales: 0 is "unset", 1 changes nothing.
    ("embedding_scale", &[0.0, 1.0], "this scale is not implemented for this architecture"),
    ("residual_scale", &[0.0, 1.0], "this scale is not implemented for this architecture"),
    ("logit_scale", &[0.0, 1.0], "this scale is not implemented for this architecture"),
    ("attention.scale", &[0.0], "a custom attention scale is not implemented (only 1/sqrt(head size))"),
];

/// The `{arch}.*` keys of one file.
pub(crate) struct ArchKeys<'a> {
    pub gguf: &'a GgufFile,
    pub arch: &'a str,
}

/// The sizes of a decoder's layers and attention heads, as every architecture reads them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DecoderDims {
    pub hidden_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// `attention.key_length`, default `hidden_size / n_heads`.
    pub head_dim: usize,
}

impl ArchKeys<'_> {
    /// Reads the layer and head sizes, bounding them before anything is allocated from them
    /// (they come from an untrusted file): at least one layer and one hidden unit, query heads
    /// that KV heads divide, an even head size up to [`MAX_HEAD_DIM`], and value heads and
    /// RoPE over exactly the key head size (the only shapes the shared forward computes).
    pub fn decoder_dims(&self) -> Result<DecoderDims> {
        let hidden_size = self.usize("embedding_length")?;
        let n_layers = self.usize("block_count")?;
        if n_layers == 0 || hidden_size == 0 {
            return Err(load_error(
                self.gguf,
                format!(
                    "`{}` is {n_layers} and `{}` is {hidden_size}: both must be at least 1",
                    self.key("block_count"),
                    self.key("embedding_length")
                ),
            ));
        }
        let n_heads = self.usize("attention.head_count")?;
        let n_kv_heads = self.optional_usize("attention.head_count_kv", n_heads)?;
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(load_error(self.gguf, format!("{n_heads} attention heads cannot share {n_kv_heads} KV heads")));
        }
        let head_dim = self.optional_usize("attention.key_length", hidden_size / n_heads)?;
        if head_dim == 0 || head_dim > MAX_HEAD_DIM || !head_dim.is_multiple_of(2) {
            return Err(load_error(
                self.gguf,
                format!(
                    "`{}` is {head_dim}; supported head sizes are even, 2..={MAX_HEAD_DIM}",
                    self.key("attention.key_length")
                ),
            ));
        }
        for suffix in ["attention.value_length", "rope.dimension_count"] {
            let key = self.key(suffix);
            if let Some(value) = self.gguf.get(&key) {
                if value.as_u64() != Some(head_dim as u64) {
                    let why = format!("it must equal the key head size {head_dim}");
                    return Err(self.refusal(&key, value, &why));
                }
            }
        }
        Ok(DecoderDims { hidden_size, n_layers, n_heads, n_kv_heads, head_dim })
    }
}

impl ArchKeys<'_> {
    /// The full key of `suffix`: `{arch}.{suffix}`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch)
    }

    /// A required non-negative integer.
    pub fn usize(&self, suffix: &str) -> Result<usize> {
        self.gguf.require_u64(&self.key(suffix)).map(|v| v as usize)
    }

    /// An optional non-negative integer: absent takes the default, but a present value of the
    /// wrong type (a per-layer array, a string) is an error, never silently replaced by the
    /// default.
    pub fn optional_usize(&self, suffix: &str, default: usize) -> Result<usize> {
        let key = self.key(suffix);
        match self.gguf.get(&key) {
            None => Ok(default),
            Some(v) => {
                v.as_u64().map(|v| v as usize).ok_or_else(|| self.gguf.wrong_type(&key, "a non-negative integer", v))
            }
        }
    }

    /// A number, rounded to f32; absent takes `default`, or is an error when there is none.
    pub fn float(&self, suffix: &str, default: Option<f64>) -> Result<f32> {
        let key = self.key(suffix);
        match self.gguf.get(&key) {
            Some(v) => v.as_f64().map(|v| v as f32).ok_or_else(|| self.gguf.wrong_type(&key, "a number", v)),
            None => default
                .map(|v| v as f32)
                .ok_or_else(|| load_error(self.gguf, format!("missing float metadata `{key}`"))),
        }
    }

    /// The error refusing `key` = `value`, naming both and saying why.
    pub fn refusal(&self, key: &str, value: &Value, why: &str) -> Error {
        load_error(self.gguf, format!("metadata `{key}` = {} is not supported: {why}", value.describe()))
    }

    /// Refuses the first key of `table` present with a value other than its "off" values, so a
    /// model is never run silently wrong. Absent keys are fine.
    pub fn refuse_unless_off(&self, table: &MustBeOff) -> Result<()> {
        for &(suffix, off, why) in table {
            let key = self.key(suffix);
            if let Some(value) = self.gguf.get(&key) {
                if !value.as_f64().is_some_and(|v| off.contains(&v)) {
                    return Err(self.refusal(&key, value, why));
                }
            }
        }
        Ok(())
    }

    /// Refuses `attention.causal` set to anything but true: only causal attention is
    /// implemented.
    pub fn refuse_non_causal(&self) -> Result<()> {
        let key = self.key("attention.causal");
        match self.gguf.get(&key) {
            Some(value) if value.as_bool() != Some(true) => {
                Err(self.refusal(&key, value, "only causal attention is implemented"))
            }
            _ => Ok(()),
        }
    }

    /// llama.cpp reads an absent `rope.scaling.type` as `linear` (so a factor alone scales) and
    /// ignores the factor only when the type is explicitly `none`; any scaling is refused for
    /// now.
    pub fn refuse_rope_scaling(&self) -> Result<()> {
        let type_key = self.key("rope.scaling.type");
        let factor_key = self.key("rope.scaling.factor");
        match self.gguf.get(&type_key) {
            Some(value) if value.as_str() == Some("none") => Ok(()),
            Some(value) => Err(self.refusal(&type_key, value, ROPE_SCALING_WHY)),
            None => match self.gguf.get(&factor_key) {
                Some(value) if !value.as_f64().is_some_and(|f| f == 0.0 || f == 1.0) => {
                    Err(self.refusal(&factor_key, value, ROPE_SCALING_WHY))
                }
                _ => Ok(()),
            },
        }
    }

    /// The linear RoPE scale factor, as llama.cpp reads it: positions are divided by it (1 means
    /// no scaling). `rope.scaling.type` absent means `linear`, so a factor alone scales; `none`
    /// ignores the factor. The factor is `rope.scaling.factor`, else the older
    /// `rope.scale_linear`; absent or 0 means 1. `longrope` reads the factor too (its frequency
    /// factors are tensors: see the llama decoder); any other type (`yarn`) is refused naming it,
    /// as is a factor that is not a positive number.
    pub fn rope_linear_factor(&self) -> Result<f64> {
        let type_key = self.key("rope.scaling.type");
        if let Some(value) = self.gguf.get(&type_key) {
            match value.as_str() {
                Some("none") => return Ok(1.0),
                Some("linear" | "longrope") => {}
                _ => return Err(self.refusal(&type_key, value, ROPE_SCALING_TYPE_WHY)),
            }
        }
        let factor = ["rope.scaling.factor", "rope.scale_linear"].into_iter().find_map(|suffix| {
            let key = self.key(suffix);
            self.gguf.get(&key).map(|value| (key, value))
        });
        let Some((factor_key, value)) = factor else { return Ok(1.0) };
        match value.as_f64() {
            Some(0.0) => Ok(1.0),
            Some(f) if f.is_finite() && f > 0.0 => Ok(f),
            _ => Err(self.refusal(&factor_key, value, "the RoPE scale factor must be a positive number")),
        }
    }

    /// `rope.scaling.attn_factor`: ggml multiplies the rotated queries and keys by it (LongRoPE's
    /// converter writes `sqrt(1 + ln(scale) / ln(original context))`); absent or 0 means 1.
    pub fn rope_attention_factor(&self) -> Result<f32> {
        let key = self.key("rope.scaling.attn_factor");
        match self.gguf.get(&key) {
            None => Ok(1.0),
            Some(value) => match value.as_f64() {
                Some(0.0) => Ok(1.0),
                Some(f) if f.is_finite() && f > 0.0 => Ok(f as f32),
                _ => Err(self.refusal(&key, value, "the RoPE attention factor must be a positive number")),
            },
        }
    }
}
