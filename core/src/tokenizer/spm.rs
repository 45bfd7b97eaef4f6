//! SentencePiece tokenization from GGUF metadata (`tokenizer.ggml.model = llama`), as llama.cpp
//! does it, so that prompts tokenize to the ids the model was evaluated with there.
//!
//! The algorithm:
//! 1. Tokens that must be matched whole (control, user-defined and unknown entries, e.g. Gemma's
//!    `<start_of_turn>`) are cut out of the text first, longest token first. One Aho-Corasick
//!    pass finds which of them occur at all (Gemma 3 has 6,414; a prompt holds a handful), and
//!    only those are cut, one after another, as llama.cpp does for all of them.
//! 2. Each remaining text fragment gets a leading space when `add_space_prefix` is set and the
//!    fragment starts the text or follows a whole-matched token; spaces become `▁`.
//! 3. The fragment starts as one symbol per character. Repeatedly, the adjacent pair whose
//!    concatenation is a vocabulary entry with the highest score is merged (ties: the leftmost
//!    pair). A pair found stale (one side already merged away) is skipped.
//! 4. Each final symbol is its vocabulary entry, or, when it is not one (an unmergeable
//!    character outside the vocabulary), one `<0xXX>` byte-fallback token per UTF-8 byte.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use aho_corasick::AhoCorasick;

use crate::error::{Error, Result};

/// The SentencePiece space marker `▁` (U+2581).
pub(super) const SPACE_MARKER: char = '\u{2581}';

/// What one vocabulary entry is, from GGUF `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PieceKind {
    /// Ordinary text, merged by score.
    Normal,
    /// Matched whole in the input before the merge pass (control, user-defined, unknown).
    Whole,
    /// Matched whole, and the whitespace right after it is dropped (llama.cpp's
    /// `LLAMA_TOKEN_ATTR_RSTRIP`, which it gives Phi-3's special tokens).
    WholeStripsSpaceAfter,
    /// Never produced by the merge pass (unused entries, byte tokens reached only by fallback).
    Other,
}

/// A SentencePiece vocabulary ready to encode.
#[derive(Debug)]
pub(super) struct SentencePiece {
    /// Scores by id: a pair whose concatenation scores higher merges first.
    scores: Vec<f32>,
    /// Text to id; for a text listed twice the later id wins (as in llama.cpp).
    ids: HashMap<String, u32>,
    /// Entries matched whole before the merge pass, longest text first (then lowest id).
    whole_tokens: Vec<WholeToken>,
    /// Finds every occurrence of every whole token; pattern `i` is `whole_tokens[i]`.
    whole_token_finder: AhoCorasick,
    /// The byte-fallback token of every byte value, if the vocabulary has one.
    byte_tokens: Vec<Option<u32>>,
    add_space_prefix: bool,
}

/// A vocabulary entry matched whole in the input.
#[derive(Debug)]
struct WholeToken {
    text: String,
    id: u32,
    strips_space_after: bool,
}

/// A part of the input: raw text still to be tokenized, or a token matched whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

impl SentencePiece {
    /// Builds the encoder. `texts`, `scores` and `kinds` are indexed by id and have equal length
    /// (checked by the caller against the GGUF keys they come from).
    ///
    /// Fails only if the whole-token automaton cannot be built (it would exceed the automaton's
    /// size limits, far beyond any real vocabulary).
    pub(super) fn new(texts: &[String], scores: Vec<f32>, kinds: &[PieceKind], add_space_prefix: bool) -> Result<Self> {
        let ids: HashMap<String, u32> = texts.iter().enumerate().map(|(id, text)| (text.clone(), id as u32)).collect();
        let mut whole_tokens: Vec<WholeToken> = (0..texts.len())
            .filter_map(|id| {
                let strips_space_after = match kinds[id] {
                    PieceKind::Whole => false,
                    PieceKind::WholeStripsSpaceAfter => true,
                    PieceKind::Normal | PieceKind::Other => return None,
                };
                Some(WholeToken { text: texts[id].clone(), id: id as u32, strips_space_after })
            })
            .collect();
        // Longest first, so that a token containing another (`<|end|>` in `<|endoftext|>`) wins.
        whole_tokens.sort_by_key(|token| std::cmp::Reverse(token.text.len()));
        let whole_token_finder = AhoCorasick::new(whole_tokens.iter().map(|token| &token.text))
            .map_err(|e| Error::Tokenizer(format!("cannot index the tokens matched whole: {e}")))?;
        let byte_tokens = (0..=255u8).map(|byte| byte_fallback_id(&ids, byte)).collect();
        Ok(Self { scores, ids, whole_tokens, whole_token_finder, byte_tokens, add_space_prefix })
    }

    /// Whether a leading space was added to the text (and is removed again by decoding).
    pub(super) fn adds_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    pub(super) fn token_to_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// The ids of `text`, without BOS/EOS.
    pub(super) fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        // At the start of the text a space is prefixed, as after a whole-matched token.
        let mut after_whole_token = true;
        for fragment in self.split_whole_tokens(text) {
            match fragment {
                Fragment::Token(id) => {
                    ids.push(id);
                    after_whole_token = true;
                }
                Fragment::Text(text) => {
                    let prefix = if self.add_space_prefix && after_whole_token { " " } else { "" };
                    let escaped = format!("{prefix}{text}").replace(' ', &SPACE_MARKER.to_string());
                    self.encode_fragment(&escaped, &mut ids)?;
                    after_whole_token = false;
                }
            }
        }
        Ok(ids)
    }

    /// Cuts every whole-matched token out of `text`, longest token first, leftmost occurrence
    /// first; what is left between them stays text.
    ///
    /// This is llama.cpp's order, which a single leftmost-longest scan would not reproduce
    /// (with `ab` and `bcd` as tokens, `abcd` is `a` + `bcd`: the longer token is cut first).
    /// So the automaton only says which tokens occur, and those are cut in that order.
    fn split_whole_tokens<'a>(&self, text: &'a str) -> Vec<Fragment<'a>> {
        let mut fragments = if text.is_empty() { Vec::new() } else { vec![Fragment::Text(text)] };
        for rank in self.whole_tokens_in(text) {
            let token = &self.whole_tokens[rank];
            fragments = fragments
                .into_iter()
                .flat_map(|fragment| match fragment {
                    Fragment::Text(part) => split_on(part, token),
                    token => vec![token],
                })
                .collect();
        }
        fragments
    }

    /// The indices into `whole_tokens` of the tokens that occur in `text` (overlapping
    /// occurrences included), in increasing order, i.e. longest token first.
    fn whole_tokens_in(&self, text: &str) -> Vec<usize> {
        let mut occurs = vec![false; self.whole_tokens.len()];
        for found in self.whole_token_finder.find_overlapping_iter(text) {
            occurs[found.pattern().as_usize()] = true;
        }
        occurs.iter().enumerate().filter_map(|(rank, &occurs)| occurs.then_some(rank)).collect()
    }

    /// Appends the ids of one fragment (spaces already replaced by `▁`).
    fn encode_fragment(&self, text: &str, ids: &mut Vec<u32>) -> Result<()> {
        let mut symbols: Vec<Symbol> =
            text.char_indices().map(|(start, c)| Symbol { start, len: c.len_utf8(), prev: None, next: None }).collect();
        let count = symbols.len();
        for (i, symbol) in symbols.iter_mut().enumerate() {
            symbol.prev = i.checked_sub(1);
            symbol.next = (i + 1 < count).then_some(i + 1);
        }
        let mut queue = BinaryHeap::new();
        for left in 1..count {
            self.push_pair(text, &symbols, left - 1, left, &mut queue);
        }
        while let Some(pair) = queue.pop() {
            let (left, right) = (symbols[pair.left], symbols[pair.right]);
            // Stale: one side was merged into something else since the pair was queued.
            if left.len == 0 || right.len == 0 || left.len + right.len != pair.len {
                continue;
            }
            symbols[pair.left].len += right.len;
            symbols[pair.right].len = 0;
            symbols[pair.left].next = right.next;
            if let Some(next) = right.next {
                symbols[next].prev = Some(pair.left);
            }
            if let Some(prev) = left.prev {
                self.push_pair(text, &symbols, prev, pair.left, &mut queue);
            }
            if let Some(next) = right.next {
                self.push_pair(text, &symbols, pair.left, next, &mut queue);
            }
        }
        // Symbol 0 is never merged away (merges fold the right symbol into the left one).
        let mut cursor = (count > 0).then_some(0);
        while let Some(i) = cursor {
            self.emit_symbol(symbols[i].text(text), ids)?;
            cursor = symbols[i].next;
        }
        Ok(())
    }

    /// Queues the merge of two adjacent symbols if their concatenation is an entry.
    fn push_pair(&self, text: &str, symbols: &[Symbol], left: usize, right: usize, queue: &mut BinaryHeap<Pair>) {
        let len = symbols[left].len + symbols[right].len;
        let merged = &text[symbols[left].start..symbols[left].start + len];
        if let Some(&id) = self.ids.get(merged) {
            queue.push(Pair { score: self.scores[id as usize], left, right, len });
        }
    }

    /// A final symbol: its own entry, or its bytes as byte-fallback tokens.
    ///
    /// Every merged symbol is an entry (only pairs that are entries merge), so only single
    /// characters reach the fallback.
    fn emit_symbol(&self, symbol: &str, ids: &mut Vec<u32>) -> Result<()> {
        if let Some(&id) = self.ids.get(symbol) {
            ids.push(id);
            return Ok(());
        }
        for &byte in symbol.as_bytes() {
            let id = self.byte_tokens[byte as usize].ok_or_else(|| {
                Error::Tokenizer(format!(
                    "`{symbol}` is not in the SentencePiece vocabulary and it has no byte-fallback token <0x{byte:02X}>"
                ))
            })?;
            ids.push(id);
        }
        Ok(())
    }
}

/// `part` split at every non-overlapping occurrence of `token` (left to right), which becomes
/// `Token(id)`; empty text between occurrences is dropped.
fn split_on<'a>(part: &'a str, token: &WholeToken) -> Vec<Fragment<'a>> {
    let mut fragments = Vec::new();
    let mut rest = part;
    while let Some(at) = rest.find(token.text.as_str()) {
        if at > 0 {
            fragments.push(Fragment::Text(&rest[..at]));
        }
        fragments.push(Fragment::Token(token.id));
        rest = &rest[at + token.text.len()..];
        if token.strips_space_after {
            rest = rest.trim_start_matches(is_c_space);
        }
    }
    if !rest.is_empty() {
        fragments.push(Fragment::Text(rest));
    }
    fragments
}

/// C's `isspace` in the "C" locale, which llama.cpp strips with (ASCII only, `\v` included).
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r')
}

/// The token that stands for one raw byte: `<0xAB>`, or else (as llama.cpp accepts) an entry
/// whose text is that single ASCII character.
fn byte_fallback_id(ids: &HashMap<String, u32>, byte: u8) -> Option<u32> {
    ids.get(&format!("<0x{byte:02X}>"))
        .or_else(|| byte.is_ascii().then(|| ids.get(&char::from(byte).to_string())).flatten())
        .copied()
}

/// A run of characters of the fragment being merged, linked to its neighbours.
/// `len == 0` marks a symbol merged into its left neighbour.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Symbol {
    fn text<'a>(&self, fragment: &'a str) -> &'a str {
        &fragment[self.start..self.start + self.len]
    }
}

/// A candidate merge of two adjacent symbols; `len` is their combined byte length when queued,
/// which tells a stale candidate apart.
#[derive(Debug, Clone, Copy)]
struct Pair {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Ord for Pair {
    /// Higher score first; among equal scores the leftmost pair. (`partial_cmp` rather than
    /// `total_cmp` so that -0.0 and 0.0 tie, as they do in llama.cpp's comparison.)
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.partial_cmp(&other.score).unwrap_or(Ordering::Equal).then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Pair {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: byte tokens for every byte, then the given (text, score, kind) entries.
    fn vocab(entries: &[(&str, f32, PieceKind)], add_space_prefix: bool) -> SentencePiece {
        let mut texts: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
        let mut scores = vec![0.0; 256];
        let mut kinds = vec![PieceKind::Other; 256];
        for &(text, score, kind) in entries {
            texts.push(text.to_owned());
            scores.push(score);
            kinds.push(kind);
        }
        SentencePiece::new(&texts, scores, &kinds, add_space_prefix).unwrap()
    }

    fn texts(spm: &SentencePiece, ids: &[u32]) -> Vec<String> {
        let text_of: HashMap<u32, &String> = spm.ids.iter().map(|(text, &id)| (id, text)).collect();
        ids.iter().map(|id| text_of[id].clone()).collect()
    }

    const N: PieceKind = PieceKind::Normal;

    fn letters() -> Vec<(&'static str, f32, PieceKind)> {
        vec![("▁", -1.0, N), ("a", -1.0, N), ("b", -1.0, N), ("c", -1.0, N)]
    }

    #[test]
    fn merges_the_highest_scoring_pair_first() {
        // "abc": "ab" (score -2) beats "bc" (-3), so the result is "ab" + "c", not "a" + "bc".
        let mut entries = letters();
        entries.extend([("ab", -2.0, N), ("bc", -3.0, N)]);
        let spm = vocab(&entries, false);
        assert_eq!(texts(&spm, &spm.encode("abc").unwrap()), ["ab", "c"]);
        // Flip the scores and the other pair wins.
        let mut entries = letters();
        entries.extend([("ab", -3.0, N), ("bc", -2.0, N)]);
        let spm = vocab(&entries, false);
        assert_eq!(texts(&spm, &spm.encode("abc").unwrap()), ["a", "bc"]);
    }

    #[test]
    fn equal_scores_merge_the_leftmost_pair() {
        let mut entries = letters();
        entries.extend([("aa", -2.0, N)]);
        let spm = vocab(&entries, false);
        assert_eq!(texts(&spm, &spm.encode("aaa").unwrap()), ["aa", "a"]);
    }

    #[test]
    fn space_prefix_is_added_only_when_asked() {
        let mut entries = letters();
        entries.extend([("▁a", -1.5, N)]);
        let with_prefix = vocab(&entries, true);
        assert_eq!(texts(&with_prefix, &with_prefix.encode("a b").unwrap()), ["▁a", "▁", "b"]);
        // Gemma's convention: no prefix; only the space inside the text becomes `▁`.
        let without_prefix = vocab(&entries, false);
        assert_eq!(texts(&without_prefix, &without_prefix.encode("a b").unwrap()), ["a", "▁", "b"]);
        assert!(without_prefix.encode("").unwrap().is_empty());
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes() {
        let spm = vocab(&letters(), false);
        // "é" is C3 A9 and not in the vocabulary.
        assert_eq!(texts(&spm, &spm.encode("aé").unwrap()), ["a", "<0xC3>", "<0xA9>"]);
    }

    #[test]
    fn missing_byte_fallback_is_an_error_not_a_guess() {
        let spm = SentencePiece::new(&["a".into()], vec![0.0], &[N], false).unwrap();
        let err = spm.encode("aé").unwrap_err();
        assert!(err.to_string().contains("<0xC3>"), "{err}");
    }

    #[test]
    fn whole_tokens_are_cut_out_before_merging_longest_first() {
        let mut entries = letters();
        entries.extend([("<start_of_turn>", 0.0, PieceKind::Whole), ("<s", 0.0, PieceKind::Whole), ("▁a", -1.5, N)]);
        let spm = vocab(&entries, false);
        assert_eq!(texts(&spm, &spm.encode("a<start_of_turn>b<sa").unwrap()), ["a", "<start_of_turn>", "b", "<s", "a"]);
        // With the prefix, text after a whole token gets a space too (as in llama.cpp).
        let spm = vocab(&entries, true);
        assert_eq!(texts(&spm, &spm.encode("<start_of_turn>a").unwrap()), ["<start_of_turn>", "▁a"]);
    }

    /// llama.cpp cuts the longest whole token first even where a shorter one starts earlier.
    #[test]
    fn a_longer_whole_token_is_cut_before_an_earlier_shorter_one() {
        let mut entries = letters();
        entries.extend([("d", -1.0, N), ("ab", 0.0, PieceKind::Whole), ("bcd", 0.0, PieceKind::Whole)]);
        let spm = vocab(&entries, false);
        assert_eq!(texts(&spm, &spm.encode("abcd").unwrap()), ["a", "bcd"]);
        // Overlapping occurrences of one token: leftmost first, then after it.
        assert_eq!(texts(&spm, &spm.encode("ababcdab").unwrap()), ["ab", "a", "bcd", "ab"]);
    }

    /// A token that strips the whitespace after it (Phi-3's specials in llama.cpp) drops the
    /// ASCII whitespace up to the next text; other whole tokens keep it.
    #[test]
    fn whitespace_after_a_stripping_token_is_dropped() {
        let mut entries = letters();
        entries.extend([
            ("\n", -1.0, N),
            ("<|user|>", 0.0, PieceKind::WholeStripsSpaceAfter),
            ("<s>", 0.0, PieceKind::Whole),
            ("▁a", -1.5, N),
        ]);
        let spm = vocab(&entries, true);
        assert_eq!(texts(&spm, &spm.encode("<|user|> \n\ta<|user|>").unwrap()), ["<|user|>", "▁a", "<|user|>"]);
        assert_eq!(texts(&spm, &spm.encode("<s>\na").unwrap()), ["<s>", "▁", "\n", "a"]);
    }
}
