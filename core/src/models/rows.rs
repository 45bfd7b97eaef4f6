//! The token rows of one forward step: every chunk's tokens, in chunk order, with the position
//! each one sits at in its sequence.

use crate::models::SeqChunk;

/// One token row of a step.
#[derive(Clone, Copy)]
pub(crate) struct RowInfo {
    pub token: u32,
    pub position: usize,
}

/// Replaces `rows` with this step's rows (reusing its allocation).
pub(crate) fn fill_rows(chunks: &[SeqChunk<'_>], rows: &mut Vec<RowInfo>) {
    rows.clear();
    for chunk in chunks {
        rows.extend(
            chunk.tokens.iter().enumerate().map(|(i, &token)| RowInfo { token, position: chunk.start_pos + i }),
        );
    }
}
