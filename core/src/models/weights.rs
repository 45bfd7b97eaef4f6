//! Loading a model's weights from a GGUF, checking each tensor's shape against the config.

use crate::error::Result;
use crate::gguf::GgufFile;
use crate::models::load_error;
use crate::models::stacked::StackedMatrix;
use crate::quant::QMatrix;

/// The tensors of one opened file.
pub(crate) struct Weights<'a> {
    pub gguf: &'a GgufFile,
}

impl Weights<'_> {
    /// The tensor `name`, which must be `rows × cols`.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<QMatrix> {
        let m = QMatrix::from_gguf(self.gguf, name)?;
        if (m.rows(), m.cols()) != (rows, cols) {
            return Err(load_error(
                self.gguf,
                format!("tensor `{name}` is {}×{}, expected {rows}×{cols}", m.rows(), m.cols()),
            ));
        }
        Ok(m)
    }

    /// The tensor `name` if the file has it (shape checked as for [`Self::matrix`]).
    pub fn optional_matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Option<QMatrix>> {
        match self.gguf.tensor_info(name) {
            Some(_) => Ok(Some(self.matrix(name, rows, cols)?)),
            None => Ok(None),
        }
    }

    /// The single-row tensor `name` of `len` values, as f32 (norm weights).
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let mut values = vec![0f32; len];
        self.matrix(name, 1, len)?.dequantize_row(0, &mut values);
        Ok(values)
    }

    /// The tensors `names`, of `rows[i] × cols` each, stacked into one matrix.
    fn stacked(&self, names: &[String], rows: &[usize], cols: usize) -> Result<StackedMatrix> {
        let parts = names.iter().zip(rows).map(|(name, &r)| self.matrix(name, r, cols)).collect::<Result<Vec<_>>>()?;
        Ok(StackedMatrix::new(parts))
    }

    /// Layer `layer`'s Wq, Wk and Wv stacked: gives `[q | k | v]` per row (one fused matmul
    /// when their types agree).
    pub fn attention_qkv(&self, layer: usize, q_dim: usize, kv_dim: usize, hidden: usize) -> Result<StackedMatrix> {
        let names = ["attn_q", "attn_k", "attn_v"].map(|t| layer_tensor(layer, t));
        self.stacked(&names, &[q_dim, kv_dim, kv_dim], hidden)
    }

    /// Layer `layer`'s Wgate and Wup stacked: gives `[gate | up]` per row.
    pub fn ffn_gate_up(&self, layer: usize, ffn_size: usize, hidden: usize) -> Result<StackedMatrix> {
        let names = ["ffn_gate", "ffn_up"].map(|t| layer_tensor(layer, t));
        self.stacked(&names, &[ffn_size, ffn_size], hidden)
    }
}

/// The GGUF name of layer `layer`'s tensor `tensor`.
pub(crate) fn layer_tensor(layer: usize, tensor: &str) -> String {
    format!("blk.{layer}.{tensor}.weight")
}
