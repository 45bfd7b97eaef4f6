//! Fuzzes the streaming detokenizer and stop-string matcher (`StreamingText`) with arbitrary
//! token byte pieces and stop strings, against a plain oracle: decode all bytes at once
//! (std's lossy UTF-8) and cut at the earliest stop string.
//!
//! Invariants: the concatenated output equals the oracle's text (so it never contains a stop
//! string, is the prefix of the full text before the earliest stop, and multi-byte characters
//! split across tokens come out whole); a stop is reported exactly when the complete
//! characters so far contain one; nothing panics.
#![no_main]

use cortexstream::detokenize::{Step, StreamingText};
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

#[derive(Debug)]
struct Input {
    pieces: Vec<Vec<u8>>,
    /// Stop strings given outright.
    stops: Vec<String>,
    /// Stop strings cut out of the text itself (start, length in chars), so matches happen.
    stops_from_text: Vec<(u8, u8)>,
}

// Written out rather than derived, to spare the `arbitrary` derive dependency.
impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self { pieces: u.arbitrary()?, stops: u.arbitrary()?, stops_from_text: u.arbitrary()? })
    }
}

/// Length of `bytes` without a trailing incomplete UTF-8 sequence.
fn complete_len(bytes: &[u8]) -> usize {
    let mut done = 0;
    loop {
        match std::str::from_utf8(&bytes[done..]) {
            Ok(_) => return bytes.len(),
            Err(e) => match e.error_len() {
                Some(bad) => done += e.valid_up_to() + bad,
                None => return done + e.valid_up_to(),
            },
        }
    }
}

/// The text of `bytes` with complete characters only, decoded in one go.
fn decoded(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..complete_len(bytes)]).into_owned()
}

fn earliest_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter_map(|s| text.find(s.as_str())).min()
}

fuzz_target!(|input: Input| {
    let pieces: Vec<Vec<u8>> = input.pieces.into_iter().take(64).collect();
    let all: Vec<u8> = pieces.concat();
    let full = String::from_utf8_lossy(&all).into_owned();
    let chars: Vec<char> = full.chars().collect();
    let mut stops: Vec<String> = input.stops.into_iter().take(8).collect();
    for (start, len) in input.stops_from_text.into_iter().take(8) {
        let start = (start as usize).min(chars.len());
        let end = (start + len as usize % 8 + 1).min(chars.len());
        stops.push(chars[start..end].iter().collect());
    }
    // The engine rejects empty stop strings before they get here.
    stops.retain(|s| !s.is_empty());

    let mut streaming = StreamingText::new(stops.clone());
    let mut shown = String::new();
    let mut seen = Vec::new();
    for piece in &pieces {
        seen.extend_from_slice(piece);
        let so_far = decoded(&seen);
        match streaming.push(piece) {
            Step::Text(text) => {
                shown.push_str(&text);
                assert_eq!(earliest_stop(&so_far, &stops), None, "a stop string in {so_far:?} was missed");
                assert!(so_far.starts_with(&shown), "shown {shown:?} is not a prefix of {so_far:?}");
            }
            Step::Stopped { text, stop } => {
                shown.push_str(&text);
                let at = earliest_stop(&so_far, &stops).expect("stopped without a stop string");
                assert!(so_far[at..].starts_with(&stop), "reported stop {stop:?} is not the one at {at} in {so_far:?}");
                assert_eq!(shown, so_far[..at], "text before the earliest stop");
                return;
            }
        }
    }
    shown.push_str(&streaming.finish());
    // Only the flush can complete a stop string now (one ending in the U+FFFD that trailing
    // incomplete bytes become); it is cut there too.
    let expected = earliest_stop(&full, &stops).map_or(full.as_str(), |at| &full[..at]);
    assert_eq!(shown, expected, "streamed text equals the text decoded at once");
});
