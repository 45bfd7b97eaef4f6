//! Refusing a file whose tensors the forward would not all read: a bias, a Q/K norm, a
//! frequency table each change the numerics, and skipping one would run the model silently
//! wrong.

use crate::error::Result;
use crate::gguf::GgufFile;
use crate::models::load_error;

/// The tensors an architecture's forward reads.
pub(crate) struct ReadTensors<'a> {
    /// Read in every layer, as `blk.N.{name}.weight` for `N` in `0..n_layers`, or as
    /// `blk.N.{name}` when the name already ends in `.bias`.
    pub layer: &'a [&'a str],
    /// Read outside the layers, by full name.
    pub model: &'a [&'a str],
    pub n_layers: usize,
}

impl ReadTensors<'_> {
    fn reads(&self, name: &str) -> bool {
        if self.model.contains(&name) {
            return true;
        }
        let Some(rest) = name.strip_prefix("blk.") else { return false };
        let Some((layer, tensor)) = rest.split_once('.') else { return false };
        let in_range = layer.parse::<usize>().is_ok_and(|l| l < self.n_layers && layer == l.to_string());
        let listed = |t: &str| self.layer.contains(&t);
        in_range
            && (tensor.strip_suffix(".weight").is_some_and(listed) || (tensor.ends_with(".bias") && listed(tensor)))
    }

    /// Errors on the first tensor of the file not read, with `message(name)` as the reason.
    pub fn refuse_others(&self, gguf: &GgufFile, message: impl Fn(&str) -> String) -> Result<()> {
        match gguf.tensors().iter().find(|t| !self.reads(&t.name)) {
            None => Ok(()),
            Some(unused) => Err(load_error(gguf, message(&unused.name))),
        }
    }
}
