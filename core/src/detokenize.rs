//! Incremental detokenization: token bytes in, text that is safe to show out.
//!
//! Two things make streaming text tricky. A multi-byte character may be split across tokens,
//! so bytes wait until they form whole UTF-8 characters. And a stop string may be split across
//! tokens, so text that could still be the start of a stop string waits until it is either
//! completed (then it is cut, never shown) or ruled out (then it is shown).

/// Streams text out of token bytes, holding back partial characters and possible stop strings.
#[derive(Debug, Default)]
pub struct StreamingText {
    /// Bytes of an incomplete UTF-8 character at the end of the output so far.
    partial: Vec<u8>,
    /// Decoded text not yet emitted because it could be the start of a stop string.
    held: String,
    stops: Vec<String>,
}

/// What one token produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Text that can be shown now (possibly empty).
    Text(String),
    /// A stop string matched: the text before it, and which stop string; the request ends.
    Stopped { text: String, stop: String },
}

impl StreamingText {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops, ..Self::default() }
    }

    /// Adds the bytes of one token.
    pub fn push(&mut self, bytes: &[u8]) -> Step {
        self.partial.extend_from_slice(bytes);
        let decoded = take_complete_utf8(&mut self.partial);
        self.held.push_str(&decoded);
        if self.stops.is_empty() {
            return Step::Text(std::mem::take(&mut self.held));
        }
        if let Some((at, stop)) = self.earliest_stop(&self.held) {
            let stopped = Step::Stopped { text: self.held[..at].to_string(), stop: stop.to_string() };
            self.held.clear();
            self.partial.clear();
            return stopped;
        }
        let keep = self.longest_stop_prefix_suffix();
        let emit_to = self.held.len() - keep;
        let emitted = self.held[..emit_to].to_string();
        self.held.drain(..emit_to);
        Step::Text(emitted)
    }

    /// Everything still held back, at the end of generation. Incomplete UTF-8 bytes become
    /// U+FFFD; if that completes a stop string (one ending in U+FFFD), the text is cut there too,
    /// so the output never contains a stop string.
    pub fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.held);
        if !self.partial.is_empty() {
            out.push_str(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
        if let Some((at, _)) = self.earliest_stop(&out) {
            out.truncate(at);
        }
        out
    }

    /// Where the earliest full stop-string match in `text` starts, and which string it is: the
    /// earliest start wins (the text is cut there), on a tie the string listed first.
    fn earliest_stop(&self, text: &str) -> Option<(usize, &str)> {
        self.stops
            .iter()
            .enumerate()
            .filter_map(|(listed, stop)| text.find(stop.as_str()).map(|at| (at, listed, stop.as_str())))
            .min_by_key(|&(at, listed, _)| (at, listed))
            .map(|(at, _, stop)| (at, stop))
    }

    /// Length in bytes of the longest suffix of `held` that is a proper prefix of a stop string.
    fn longest_stop_prefix_suffix(&self) -> usize {
        let held = self.held.as_str();
        let mut best = 0;
        for stop in &self.stops {
            // Only char boundaries of `held` can start a suffix we would keep.
            let max = stop.len().saturating_sub(1).min(held.len());
            for len in (best + 1..=max).rev() {
                let start = held.len() - len;
                if held.is_char_boundary(start) && stop.as_bytes().starts_with(&held.as_bytes()[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

/// Removes and returns the longest prefix of `bytes` that is whole UTF-8 characters.
/// Bytes that can never be valid become U+FFFD; a trailing incomplete character stays.
fn take_complete_utf8(bytes: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut rest: &[u8] = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                // SAFETY-free: from_utf8 just told us `valid` is UTF-8.
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        rest = &after[bad..];
                    }
                    None => {
                        rest = after;
                        break;
                    }
                }
            }
        }
    }
    let consumed = bytes.len() - rest.len();
    bytes.drain(..consumed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(st: &mut StreamingText, pieces: &[&[u8]]) -> (String, Option<String>) {
        let mut shown = String::new();
        for p in pieces {
            match st.push(p) {
                Step::Text(t) => shown.push_str(&t),
                Step::Stopped { text, stop } => {
                    shown.push_str(&text);
                    return (shown, Some(stop));
                }
            }
        }
        shown.push_str(&st.finish());
        (shown, None)
    }

    #[test]
    fn multibyte_split_across_tokens_is_emitted_whole() {
        let mut st = StreamingText::new(vec![]);
        let bytes = "é你".as_bytes();
        assert_eq!(st.push(&bytes[..1]), Step::Text(String::new()));
        assert_eq!(st.push(&bytes[1..3]), Step::Text("é".into()));
        assert_eq!(st.push(&bytes[3..4]), Step::Text(String::new()));
        assert_eq!(st.push(&bytes[4..]), Step::Text("你".into()));
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut st = StreamingText::new(vec![]);
        assert_eq!(st.push(b"a\xffb"), Step::Text("a\u{FFFD}b".into()));
        assert_eq!(st.push(b"\xe4\xbd"), Step::Text(String::new()));
        assert_eq!(st.finish(), "\u{FFFD}");
    }

    #[test]
    fn stop_string_spanning_tokens_is_never_emitted() {
        let mut st = StreamingText::new(vec!["END".into()]);
        let (shown, stopped) = feed(&mut st, &[b"hello E", b"N", b"D and more"]);
        assert_eq!(shown, "hello ");
        assert_eq!(stopped.as_deref(), Some("END"));
    }

    #[test]
    fn held_text_is_released_when_the_stop_string_does_not_complete() {
        let mut st = StreamingText::new(vec!["END".into()]);
        assert_eq!(st.push(b"hello EN"), Step::Text("hello ".into()));
        assert_eq!(st.push(b"X"), Step::Text("ENX".into()));
    }

    #[test]
    fn earliest_match_wins_when_one_stop_is_a_prefix_of_another() {
        let mut st = StreamingText::new(vec!["abc".into(), "ab".into()]);
        let (shown, stopped) = feed(&mut st, &[b"xa", b"bc"]);
        assert_eq!(shown, "x");
        assert_eq!(stopped.as_deref(), Some("abc"), "both start at the same place: the one listed first");

        let mut st = StreamingText::new(vec!["b".into(), "xab".into()]);
        let (shown, stopped) = feed(&mut st, &[b"x", b"ab"]);
        assert_eq!(shown, "", "xab starts before b, so it wins");
        assert_eq!(stopped.as_deref(), Some("xab"));
    }

    #[test]
    fn many_stop_strings_are_honoured() {
        let stops: Vec<String> = (0..100).map(|i| format!("stop{i:03}")).collect();
        let mut st = StreamingText::new(stops);
        let (shown, stopped) = feed(&mut st, &[b"text sto", b"p04", b"2 tail"]);
        assert_eq!(shown, "text ");
        assert_eq!(stopped.as_deref(), Some("stop042"));
    }

    #[test]
    fn finish_cuts_a_stop_string_completed_by_the_replacement_character() {
        let mut st = StreamingText::new(vec!["a\u{FFFD}".into()]);
        assert_eq!(st.push(b"xa\xe4"), Step::Text("x".into()));
        assert_eq!(st.finish(), "");
    }

    #[test]
    fn finish_flushes_held_text() {
        let mut st = StreamingText::new(vec!["</s>".into()]);
        assert_eq!(st.push(b"ok </"), Step::Text("ok ".into()));
        assert_eq!(st.finish(), "</");
    }
}
