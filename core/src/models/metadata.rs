//! Reading an architecture's `{arch}.*` hyperparameters from GGUF metadata, with errors that
//! name the key.

use crate::gguf::GgufFile;
use crate::models::load_error;
use crate::Result;

/// The `{arch}.*` keys of one file.
pub(crate) struct ArchKeys<'a> {
    pub gguf: &'a GgufFile,
    pub arch: &'a str,
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
}
