//! Model implementations. Generation models run one batched forward per engine step
//! over a list of [`SeqChunk`]s; embedding models map texts to vectors.

pub(crate) mod attention;
pub mod bert;
pub(crate) mod elementwise;
pub mod llama;

/// The slice of one sequence that a forward step processes.
///
/// `tokens` sit at positions `start_pos .. start_pos + tokens.len()`. Their K/V are written
/// into the paged cache through `block_table` (position `p` lives in block
/// `block_table[p / block_size]`, slot `p % block_size`), and attention reads positions
/// `0 .. start_pos + tokens.len()` through the same table. `block_table` must already cover
/// every position up to `start_pos + tokens.len()`.
#[derive(Debug, Clone, Copy)]
pub struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    pub start_pos: usize,
    pub block_table: &'a [u32],
    /// Compute logits for the last token of this chunk (false for a non-final prefill chunk).
    pub want_logits: bool,
}
