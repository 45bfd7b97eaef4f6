//! Bidirectional multi-head self-attention over packed sequences.
//!
//! Sequences of a batch are packed back to back with no padding, and each one attends only to
//! its own tokens. That is the masked attention of a padded batch without the wasted work, and
//! it makes a sequence's result independent of what else is in the batch.

use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use super::linear::matmul_transposed;
use super::ops::softmax_in_place;
use crate::threadpool::ThreadPool;

/// The shape of the attention heads.
#[derive(Debug, Clone, Copy)]
pub(super) struct HeadLayout {
    pub n_heads: usize,
    pub head_dim: usize,
}

impl HeadLayout {
    fn hidden(self) -> usize {
        self.n_heads * self.head_dim
    }
}

/// Attention for every sequence and head, one pool task per (sequence, head).
///
/// `qkv` holds one row per token, `[query | key | value]`, each `hidden` wide with heads side by
/// side; `sequences` are the token ranges of each sequence. `out` receives `[tokens, hidden]`,
/// heads side by side, ready for the output projection.
pub(super) fn self_attention(
    pool: &ThreadPool,
    heads: HeadLayout,
    qkv: &[f32],
    sequences: &[Range<usize>],
    out: &mut [f32],
) {
    let hidden = heads.hidden();
    let n_tokens = out.len() / hidden;
    assert_eq!(qkv.len(), n_tokens * 3 * hidden, "qkv rows do not match the output rows");
    let packed_in_order = sequences.iter().try_fold(0, |end, s| (s.start == end).then_some(s.end));
    assert_eq!(packed_in_order, Some(n_tokens), "sequences must tile the token rows in order");

    // Each task writes one contiguous `[len, head_dim]` block of this head-major buffer (sequence,
    // then head), so tasks own disjoint slices; a cheap scatter then interleaves the heads.
    let mut head_major = vec![0.0f32; out.len()];
    let mut blocks = Vec::with_capacity(sequences.len() * heads.n_heads);
    let mut rest = head_major.as_mut_slice();
    for sequence in sequences {
        for _ in 0..heads.n_heads {
            let (block, tail) = rest.split_at_mut(sequence.len() * heads.head_dim);
            blocks.push(Mutex::new(block));
            rest = tail;
        }
    }
    pool.run(blocks.len(), &|task| {
        let sequence = sequences[task / heads.n_heads].clone();
        let head = task % heads.n_heads;
        let mut block = blocks[task].lock().unwrap_or_else(PoisonError::into_inner);
        attend_one_head(heads, &qkv[sequence.start * 3 * hidden..sequence.end * 3 * hidden], head, &mut block);
    });
    drop(blocks);
    scatter_heads(heads, sequences, &head_major, out);
}

/// `softmax(q · kᵀ / √d) · v` for one head of one sequence; `qkv` holds that sequence's rows.
fn attend_one_head(heads: HeadLayout, qkv: &[f32], head: usize, out: &mut [f32]) {
    let (hidden, d) = (heads.hidden(), heads.head_dim);
    let len = qkv.len() / (3 * hidden);
    let column = |part: usize, token: usize| {
        let start = token * 3 * hidden + part * hidden + head * d;
        &qkv[start..start + d]
    };
    // Gather this head's operands into contiguous rows for the matmul kernel; the scale goes
    // into the queries, and the values are transposed so that `probabilities · v` is also `x · Wᵀ`.
    let scale = 1.0 / (d as f32).sqrt();
    let queries: Vec<f32> = (0..len).flat_map(|t| column(0, t).iter().map(|q| q * scale)).collect();
    let keys: Vec<f32> = (0..len).flat_map(|t| column(1, t).iter().copied()).collect();
    let mut values_t = vec![0.0f32; d * len];
    for t in 0..len {
        for (i, v) in column(2, t).iter().enumerate() {
            values_t[i * len + t] = *v;
        }
    }

    let mut probabilities = vec![0.0f32; len * len];
    matmul_transposed(&queries, &keys, d, None, &mut probabilities);
    for row in probabilities.chunks_exact_mut(len) {
        softmax_in_place(row);
    }
    matmul_transposed(&probabilities, &values_t, len, None, out);
}

/// Copies head-major blocks (`[sequence][head][token][d]`) into token rows with heads side by side.
fn scatter_heads(heads: HeadLayout, sequences: &[Range<usize>], head_major: &[f32], out: &mut [f32]) {
    let (hidden, d) = (heads.hidden(), heads.head_dim);
    for sequence in sequences {
        let block = &head_major[sequence.start * hidden..sequence.end * hidden];
        for head in 0..heads.n_heads {
            let head_block = &block[head * sequence.len() * d..(head + 1) * sequence.len() * d];
            for (t, values) in head_block.chunks_exact(d).enumerate() {
                let row = (sequence.start + t) * hidden + head * d;
                out[row..row + d].copy_from_slice(values);
            }
        }
    }
}
