//! Reading tool calls back out of a model's text: all at once ([`parse_tool_calls`]) or as the
//! text streams in ([`ToolCallStream`]).
//!
//! Text that does not parse as a call is never dropped: it stays content.

use serde_json::Value;

use super::{new_call_id, ToolCall, ToolCallFormat};

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const MISTRAL_MARKER: &str = "[TOOL_CALLS]";
const MISTRAL_ARGS: &str = "[ARGS]";
const MISTRAL_CALL_ID: &str = "[CALL_ID]";
const LLAMA_PYTHON_TAG: &str = "<|python_tag|>";

/// A model's answer split into its text and its calls.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedOutput {
    /// The text outside the calls (trimmed when there were calls).
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
}

/// Parses the calls out of a complete answer written in `format`.
pub fn parse_tool_calls(format: ToolCallFormat, text: &str) -> ParsedOutput {
    let parsed = match format {
        ToolCallFormat::Hermes => parse_hermes(text),
        ToolCallFormat::Llama3 => parse_llama3(text),
        ToolCallFormat::Mistral => parse_mistral(text),
        ToolCallFormat::MistralArgs => parse_mistral_args(text),
        ToolCallFormat::Generic => parse_generic(text),
    };
    match parsed {
        Some(parsed) if !parsed.tool_calls.is_empty() => parsed,
        _ => ParsedOutput { content: text.to_string(), tool_calls: Vec::new() },
    }
}

/// `<tool_call>{json}</tool_call>` blocks anywhere in the text (the last may be unclosed:
/// the answer ran out of tokens or the model stopped at `</tool_call>`).
fn parse_hermes(text: &str) -> Option<ParsedOutput> {
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(HERMES_OPEN) {
        content.push_str(&rest[..start]);
        let after = &rest[start + HERMES_OPEN.len()..];
        let (inner, next) = match after.find(HERMES_CLOSE) {
            Some(end) => (&after[..end], &after[end + HERMES_CLOSE.len()..]),
            None => (after, ""),
        };
        match serde_json::from_str(inner.trim()).ok().and_then(|v| call_from_json(&v)) {
            Some(call) => calls.push(call),
            None => content.push_str(&rest[start..rest.len() - next.len()]),
        }
        rest = next;
    }
    content.push_str(rest);
    Some(ParsedOutput { content: content.trim().to_string(), tool_calls: calls })
}

/// The whole answer is one or more call objects, separated by `;` or whitespace, optionally
/// after `<|python_tag|>`.
fn parse_llama3(text: &str) -> Option<ParsedOutput> {
    let trimmed = text.trim_start();
    let body = trimmed.strip_prefix(LLAMA_PYTHON_TAG).unwrap_or(trimmed);
    let values = json_sequence(body, ';')?;
    let calls = values.iter().map(call_from_json).collect::<Option<Vec<_>>>()?;
    Some(ParsedOutput { content: String::new(), tool_calls: calls })
}

/// `[TOOL_CALLS]` then a JSON array of calls. The marker is a control token that decoding
/// may not print, so an answer that is only such an array counts too.
fn parse_mistral(text: &str) -> Option<ParsedOutput> {
    let (content, array) = match text.find(MISTRAL_MARKER) {
        Some(at) => (&text[..at], &text[at + MISTRAL_MARKER.len()..]),
        None => ("", text),
    };
    let Value::Array(items) = serde_json::from_str(array.trim()).ok()? else { return None };
    let calls = items.iter().map(call_from_json).collect::<Option<Vec<_>>>()?;
    Some(ParsedOutput { content: content.trim().to_string(), tool_calls: calls })
}

/// `[TOOL_CALLS]name[CALL_ID]id[ARGS]{..}` per call (`[CALL_ID]id` optional). The markers are
/// control tokens that decoding may not print, so `name{..}` one after another counts too.
fn parse_mistral_args(text: &str) -> Option<ParsedOutput> {
    let (content, mut rest) = match text.find(MISTRAL_MARKER) {
        Some(at) => (&text[..at], &text[at..]),
        None => ("", text),
    };
    let mut calls = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        rest = rest.strip_prefix(MISTRAL_MARKER).unwrap_or(rest);
        let name_len = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
        let name = &rest[..name_len];
        rest = &rest[name_len..];
        if let Some(after) = rest.strip_prefix(MISTRAL_CALL_ID) {
            rest = after.trim_start_matches(|c: char| c.is_ascii_alphanumeric());
        }
        rest = rest.strip_prefix(MISTRAL_ARGS).unwrap_or(rest);
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let arguments = stream.next()?.ok()?;
        rest = &rest[stream.byte_offset()..];
        calls.push(call_from_json(&serde_json::json!({ "name": name, "arguments": arguments }))?);
    }
    Some(ParsedOutput { content: content.trim().to_string(), tool_calls: calls })
}

/// A character of a function name (see `valid_function_name`).
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// `{"tool_calls": [{"name", "arguments"}, ..]}` as the whole answer.
fn parse_generic(text: &str) -> Option<ParsedOutput> {
    let value: Value = serde_json::from_str(text.trim()).ok()?;
    let items = value.get("tool_calls")?.as_array()?;
    let calls = items.iter().map(call_from_json).collect::<Option<Vec<_>>>()?;
    Some(ParsedOutput { content: String::new(), tool_calls: calls })
}

/// JSON values one after another, separated by whitespace and `separator`; `None` unless the
/// whole text is such a sequence of at least one value.
fn json_sequence(text: &str, separator: char) -> Option<Vec<Value>> {
    let mut values = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == separator);
        if rest.is_empty() {
            break;
        }
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        values.push(stream.next()?.ok()?);
        rest = &rest[stream.byte_offset()..];
    }
    (!values.is_empty()).then_some(values)
}

/// A call object: a string `name` and its arguments under `arguments` or `parameters` (an
/// object, or JSON text of one; absent means none). Anything else is not a call.
fn call_from_json(value: &Value) -> Option<ToolCall> {
    let object = value.as_object()?;
    let name = object.get("name")?.as_str().filter(|n| !n.is_empty())?;
    let arguments = match object.get("arguments").or_else(|| object.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        Some(arguments @ Value::Object(_)) => arguments.to_string(),
        Some(Value::String(text)) if serde_json::from_str::<Value>(text).is_ok_and(|v| v.is_object()) => text.clone(),
        Some(_) => return None,
    };
    Some(ToolCall { id: new_call_id(), name: name.to_string(), arguments })
}

/// What a [`ToolCallStream`] lets out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// Text that is certainly not part of a call.
    Content(String),
    /// A complete call, the `index`-th of the answer.
    Call { index: usize, call: ToolCall },
}

/// Incremental parsing for streamed answers: text comes out as soon as it cannot be the start
/// of a call; a call comes out once it is complete. Text that began like a call but did not
/// parse as one comes out as content (at the latest from [`finish`](Self::finish)).
#[derive(Debug)]
pub struct ToolCallStream {
    format: ToolCallFormat,
    /// Text received and not yet let out.
    pending: String,
    /// Inside something that may be a call (until its end, or the answer's).
    capturing: bool,
    /// For formats whose calls are the whole answer: decided that this answer is plain text.
    plain_text: bool,
    calls: usize,
}

impl ToolCallStream {
    pub fn new(format: ToolCallFormat) -> Self {
        Self { format, pending: String::new(), capturing: false, plain_text: false, calls: 0 }
    }

    /// Takes the next piece of text; returns what can be let out now.
    pub fn push(&mut self, text: &str) -> Vec<StreamItem> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        match self.format {
            ToolCallFormat::Hermes => self.advance_hermes(&mut out),
            _ => self.advance_whole_answer(&mut out),
        }
        out
    }

    /// The answer is complete: lets out everything still held back.
    pub fn finish(&mut self) -> Vec<StreamItem> {
        let text = std::mem::take(&mut self.pending);
        let mut out = Vec::new();
        if text.is_empty() {
            return out;
        }
        if self.capturing {
            self.capturing = false;
            self.emit_parsed(&text, &mut out);
        } else {
            out.push(StreamItem::Content(text));
        }
        out
    }

    /// Hermes: content up to `<tool_call>` (holding back a tail that may begin it), then
    /// the block up to `</tool_call>`, parsed.
    fn advance_hermes(&mut self, out: &mut Vec<StreamItem>) {
        loop {
            if self.capturing {
                let Some(end) = self.pending.find(HERMES_CLOSE) else { return };
                let block: String = self.pending.drain(..end + HERMES_CLOSE.len()).collect();
                self.capturing = false;
                self.emit_parsed(&block, out);
            } else if let Some(start) = self.pending.find(HERMES_OPEN) {
                let before: String = self.pending.drain(..start).collect();
                push_content(out, before);
                self.capturing = true;
            } else {
                let keep = longest_suffix_prefix(&self.pending, HERMES_OPEN);
                let ready: String = self.pending.drain(..self.pending.len() - keep).collect();
                push_content(out, ready);
                return;
            }
        }
    }

    /// Llama 3, Mistral, generic: the calls are the whole answer, so an answer whose first
    /// non-blank character can open one is held until the end; any other is plain text.
    fn advance_whole_answer(&mut self, out: &mut Vec<StreamItem>) {
        if self.plain_text {
            push_content(out, std::mem::take(&mut self.pending));
            return;
        }
        if self.capturing {
            return;
        }
        match opening(self.format, self.pending.trim_start()) {
            Opening::Call => self.capturing = true,
            Opening::Undecided => {}
            Opening::Text => {
                self.plain_text = true;
                push_content(out, std::mem::take(&mut self.pending));
            }
        }
    }

    fn emit_parsed(&mut self, text: &str, out: &mut Vec<StreamItem>) {
        let parsed = parse_tool_calls(self.format, text);
        push_content(out, parsed.content);
        for call in parsed.tool_calls {
            out.push(StreamItem::Call { index: self.calls, call });
            self.calls += 1;
        }
    }
}

/// What the start of an answer in a whole-answer format says about it.
enum Opening {
    Call,
    Text,
    /// Too short to tell (nothing yet, part of a marker, or a name still being written).
    Undecided,
}

fn opening(format: ToolCallFormat, start: &str) -> Opening {
    let decided = |call: bool| if call { Opening::Call } else { Opening::Text };
    let partial = |marker: &str| marker.starts_with(start) && start != marker;
    if start.is_empty() {
        return Opening::Undecided;
    }
    match format {
        ToolCallFormat::Llama3 if partial(LLAMA_PYTHON_TAG) => Opening::Undecided,
        ToolCallFormat::Llama3 => decided(start.starts_with('{') || start.starts_with(LLAMA_PYTHON_TAG)),
        ToolCallFormat::Mistral if partial(MISTRAL_MARKER) => Opening::Undecided,
        ToolCallFormat::Mistral => decided(start.starts_with('[')),
        ToolCallFormat::MistralArgs if partial(MISTRAL_MARKER) => Opening::Undecided,
        ToolCallFormat::MistralArgs if start.starts_with(MISTRAL_MARKER) => Opening::Call,
        ToolCallFormat::MistralArgs => {
            // `name{` or `name[ARGS]` without the unprinted marker; a name alone may go on.
            let after_name = start.trim_start_matches(is_name_char);
            match after_name.chars().next() {
                None => Opening::Undecided,
                Some(c) => decided(after_name.len() < start.len() && (c == '{' || c == '[')),
            }
        }
        _ => decided(start.starts_with('{')),
    }
}

fn push_content(out: &mut Vec<StreamItem>, text: String) {
    if !text.is_empty() {
        out.push(StreamItem::Content(text));
    }
}

/// The length of the longest end of `text` that is a proper beginning of `marker` (what must
/// be held back because the next piece may complete the marker).
fn longest_suffix_prefix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

/// OpenAI's finish reason for an answer that stopped after calling tools.
pub const TOOL_CALLS_FINISH_REASON: &str = "tool_calls";

/// The finish reason a front door reports for an answer that offered tools: `"tool_calls"`
/// when it stopped (end of turn or complete call grammar) having made calls, else the core's.
pub fn finish_reason(reason: crate::request::FinishReason, made_calls: bool) -> &'static str {
    if made_calls && reason == crate::request::FinishReason::Stop {
        TOOL_CALLS_FINISH_REASON
    } else {
        reason.as_str()
    }
}

/// One streamed request's text split into content and calls, for front doors that hand out
/// chunks: each token's text goes through [`text`](Self::text), the last chunk through
/// [`finish`](Self::finish).
#[derive(Debug)]
pub struct ToolCallSplitter {
    stream: ToolCallStream,
    made_calls: bool,
}

impl ToolCallSplitter {
    pub fn new(format: ToolCallFormat) -> Self {
        Self { stream: ToolCallStream::new(format), made_calls: false }
    }

    /// The content and the completed calls of the next piece of text.
    pub fn text(&mut self, text: &str) -> ParsedOutput {
        let items = self.stream.push(text);
        self.collect(items)
    }

    /// Everything held back, at the end of the answer.
    pub fn finish(&mut self) -> ParsedOutput {
        let items = self.stream.finish();
        self.collect(items)
    }

    /// Whether any call has come out so far.
    pub fn made_calls(&self) -> bool {
        self.made_calls
    }

    fn collect(&mut self, items: Vec<StreamItem>) -> ParsedOutput {
        let mut out = ParsedOutput::default();
        for item in items {
            match item {
                StreamItem::Content(text) => out.content.push_str(&text),
                StreamItem::Call { call, .. } => out.tool_calls.push(call),
            }
        }
        self.made_calls |= !out.tool_calls.is_empty();
        out
    }
}
