//! Our vocabulary as llguidance sees it: a token trie over each token's output bytes.

use std::sync::Arc;

use toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};

use crate::tokenizer::Tokenizer;

/// toktrie's marker for special tokens: their trie entry is this byte then their text, so no
/// grammar over text can produce them by accident.
const SPECIAL_TOKEN_MARKER: u8 = 0xFF;

/// The token environment for `vocab_size` logits (the model's width, which may exceed the
/// tokenizer's: ids without an entry get no bytes and are never allowed). The end-of-generation
/// tokens are the grammar's EOS: they are allowed exactly when the grammar may end.
pub(crate) fn token_env(tokenizer: &Tokenizer, vocab_size: usize) -> TokEnv {
    let words: Vec<Vec<u8>> = (0..vocab_size as u32).map(|id| trie_bytes(tokenizer, id)).collect();
    let ends = end_tokens(tokenizer, vocab_size);
    let info = TokRxInfo::new(vocab_size as u32, ends[0]);
    let trie = TokTrie::from(&info, &words).with_eos_tokens(&ends);
    // Greedy re-tokenization is only used for forced tokens, which we do not use.
    Arc::new(ApproximateTokEnv::new(trie))
}

fn trie_bytes(tokenizer: &Tokenizer, id: u32) -> Vec<u8> {
    let bytes = tokenizer.token_bytes(id).unwrap_or_default();
    if tokenizer.is_special(id) {
        let mut marked = Vec::with_capacity(bytes.len() + 1);
        marked.push(SPECIAL_TOKEN_MARKER);
        marked.extend_from_slice(bytes);
        marked
    } else {
        bytes.to_vec()
    }
}

/// The ids that end generation and fit the logits; never empty (toktrie needs an EOS): a
/// vocabulary without any lends id 0 for the role.
fn end_tokens(tokenizer: &Tokenizer, vocab_size: usize) -> Vec<u32> {
    let ends: Vec<u32> =
        tokenizer.end_of_generation_ids().iter().copied().filter(|&id| (id as usize) < vocab_size).collect();
    if ends.is_empty() {
        vec![0]
    } else {
        ends
    }
}
