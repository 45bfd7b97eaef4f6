//! A step's rows in passes of at most [`MAX_ROWS`] (llama.cpp's `n_ubatch`).
//!
//! The scheduler may hand the model thousands of prompt tokens in one step (`max_batch_tokens`,
//! 2048 by default, all of it for a prompt with no decodes beside it). One forward pass over
//! all of them is slower than several smaller ones: the activations of every row (rows × the
//! feed-forward width in f32) outgrow the caches and each weight pass streams them from memory.
//! Measured (SmolLM2 Q4_1, a 2048-token prompt alone, one thread, process CPU of the prefill,
//! three alternating runs each): one 2048-row pass 5.39-5.77 s, 512-row passes 5.01-5.13 s,
//! 64-row passes 5.10-5.46 s.
//!
//! The passes run one after another, each writing its tokens' K/V before the next attends to
//! them, which is exactly a prompt prefilled in chunks: the logits are the same bits (the
//! models compute a token's result from its query, position and its sequence's cached K/V
//! alone; `core/tests/chunked_prefill.rs`, and this module's model test).

use super::SeqChunk;

/// Most rows one forward pass carries.
pub(crate) const MAX_ROWS: usize = 512;

/// `chunks` cut, in order, into passes of at most `max_rows` rows (at least 1). A chunk cut
/// across passes keeps `want_logits` on its last part only, so the passes' logit rows,
/// concatenated, come in the chunks' order, as one pass's would.
pub(crate) fn passes<'a>(chunks: &[SeqChunk<'a>], max_rows: usize) -> Vec<Vec<SeqChunk<'a>>> {
    let max_rows = max_rows.max(1);
    let mut passes = Vec::new();
    let mut pass: Vec<SeqChunk<'a>> = Vec::new();
    let mut room = max_rows;
    for chunk in chunks {
        let mut rest = *chunk;
        while !rest.tokens.is_empty() {
            if room == 0 {
                passes.push(std::mem::take(&mut pass));
                room = max_rows;
            }
            let take = rest.tokens.len().min(room);
            let (head, tail) = rest.tokens.split_at(take);
            let last = tail.is_empty();
            pass.push(SeqChunk { tokens: head, want_logits: last && rest.want_logits, ..rest });
            rest = SeqChunk { tokens: tail, start_pos: rest.start_pos + take, ..rest };
            room -= take;
        }
    }
    if !pass.is_empty() {
        passes.push(pass);
    }
    passes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(tokens: &[u32], start_pos: usize, want_logits: bool) -> SeqChunk<'_> {
        SeqChunk { tokens, start_pos, block_table: &[], sliding_block_table: &[], want_logits }
    }

    /// (first token, start_pos, len, want_logits) of every part, pass by pass.
    fn shape(passes: &[Vec<SeqChunk<'_>>]) -> Vec<Vec<(u32, usize, usize, bool)>> {
        passes
            .iter()
            .map(|p| p.iter().map(|c| (c.tokens[0], c.start_pos, c.tokens.len(), c.want_logits)).collect())
            .collect()
    }

    #[test]
    fn chunks_are_cut_in_order_and_only_a_chunks_last_part_wants_logits() {
        let long: Vec<u32> = (100..110).collect();
        let decode = [7u32];
        let chunks = [chunk(&decode, 40, true), chunk(&long, 3, true), chunk(&decode, 9, true)];
        assert_eq!(
            shape(&passes(&chunks, 4)),
            vec![
                vec![(7, 40, 1, true), (100, 3, 3, false)],
                vec![(103, 6, 4, false)],
                vec![(107, 10, 3, true), (7, 9, 1, true)],
            ]
        );
        // A non-final prefill chunk stays without logits in every part.
        let chunks = [chunk(&long, 0, false)];
        assert!(passes(&chunks, 3).iter().flatten().all(|c| !c.want_logits));
    }

    #[test]
    fn a_step_that_fits_is_one_pass_unchanged() {
        let long: Vec<u32> = (0..512).collect();
        let chunks = [chunk(&long, 0, true)];
        assert_eq!(shape(&passes(&chunks, MAX_ROWS)), vec![vec![(0, 0, 512, true)]]);
    }
}
