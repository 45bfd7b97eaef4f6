//! What a request's stream delivers to C (`cs_event`) and the reusable buffers its
//! borrowed pointers point into.

use std::ffi::c_char;
use std::ptr;

use cortexstream::tools::{calls_to_json, ToolCallSplitter};
use cortexstream::{Event, FinishReason, StopReason, Timings, TokenLogprobs, ToolCall, ToolCallFormat, Usage};

/// Which kind of event a `cs_event` is.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum cs_event_type {
    /// A sampled token and the text it made safe to show.
    CS_EVENT_TOKEN = 0,
    /// The last event of every request: finish reason, usage, timings.
    CS_EVENT_FINISHED = 1,
}

/// Why a request ended.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum cs_finish_reason {
    /// Not finished (TOKEN events).
    CS_FINISH_NONE = 0,
    /// End-of-generation token, a stop token id or a stop string.
    CS_FINISH_STOP = 1,
    /// `max_tokens` reached or the context window is full.
    CS_FINISH_LENGTH = 2,
    /// Cancelled by the caller, by `cs_request_free`, or by engine shutdown.
    CS_FINISH_CANCELLED = 3,
    /// An error ended the request; `cs_event.error_message` says which.
    CS_FINISH_ERROR = 4,
}

/// Which stop ended a request: the detail behind `cs_finish_reason` (STOP is EOS, TOKEN,
/// STRING or GRAMMAR).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum cs_stop_kind {
    /// Not finished (TOKEN events).
    CS_STOP_NONE = 0,
    /// The model's end-of-generation token (EOS, `<|im_end|>`, ...); `stop_token_id` says which.
    CS_STOP_EOS = 1,
    /// One of the request's `stop_token_ids`; `stop_token_id` says which (also when that id is
    /// an end-of-generation token too).
    CS_STOP_TOKEN = 2,
    /// One of the request's `stop` strings; `stop_string` says which.
    CS_STOP_STRING = 3,
    /// The output constraint (schema, regex, grammar, choices) accepts no more tokens.
    CS_STOP_GRAMMAR = 4,
    /// `max_tokens` reached or the context window is full (CS_FINISH_LENGTH).
    CS_STOP_LENGTH = 5,
    /// CS_FINISH_CANCELLED.
    CS_STOP_CANCELLED = 6,
    /// CS_FINISH_ERROR.
    CS_STOP_ERROR = 7,
}

/// Token counts of one request.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct cs_usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache instead of a prefill.
    pub cached_prompt_tokens: usize,
}

/// Nanosecond timings of one request.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct cs_timings {
    /// Submit until first scheduled.
    pub queued_ns: u64,
    /// Submit until the first token was sampled.
    pub time_to_first_token_ns: u64,
    /// Prompt processing (first scheduled until the first token).
    pub prefill_ns: u64,
    /// First token until the end.
    pub decode_ns: u64,
    /// Mean time per generated token after the first (0 with fewer than two tokens).
    pub per_token_ns: u64,
    /// Submit until the end.
    pub total_ns: u64,
}

/// One of the most likely alternatives at a position.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct cs_top_logprob {
    /// The alternative token.
    pub token_id: u32,
    /// Its natural-log probability.
    pub logprob: f32,
}

/// Raw bytes lent by the library: `len` bytes at `data` (not NUL-terminated; NULL when empty).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct cs_bytes {
    /// The first byte.
    pub data: *const u8,
    /// Number of bytes at `data`.
    pub len: usize,
}

/// One event of a request's stream.
///
/// Lifetime: the event and every pointer in it are lent by the library. In a callback they
/// are valid until the callback returns; from `cs_request_next_event` until the next call on
/// that request or `cs_request_free`. Copy what you need to keep.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct cs_event {
    /// TOKEN or FINISHED; fields not listed for a type are zero / NULL.
    pub kind: cs_event_type,
    /// TOKEN: the sampled token id.
    pub token_id: u32,
    /// TOKEN: UTF-8 text this token made safe to show: whole characters only, nothing that could
    /// still become part of a stop string. Often empty (held back); a later event may carry the
    /// text of several tokens. NUL-terminated for convenience; `text_len` is authoritative.
    /// FINISHED: "" (for a request with `tools`: text held back as a possible call that was not one).
    pub text: *const c_char,
    /// Length of `text` in bytes, without the terminating NUL.
    pub text_len: usize,
    /// TOKEN: whether `logprob` and `top_logprobs` are set (the request asked for logprobs).
    pub has_logprobs: bool,
    /// TOKEN: natural-log probability of the sampled token.
    pub logprob: f32,
    /// TOKEN: the most likely alternatives, best first, `top_logprobs_len` of them (NULL if none).
    pub top_logprobs: *const cs_top_logprob,
    /// Number of entries in `top_logprobs`.
    pub top_logprobs_len: usize,
    /// FINISHED: why the request ended.
    pub finish_reason: cs_finish_reason,
    /// FINISHED: token counts.
    pub usage: cs_usage,
    /// FINISHED: nanosecond timings.
    pub timings: cs_timings,
    /// FINISHED with CS_FINISH_ERROR: what went wrong (NUL-terminated UTF-8); otherwise NULL.
    pub error_message: *const c_char,
    /// TOKEN with `has_logprobs`: the sampled token's raw bytes (OpenAI's `bytes`). A byte-level
    /// token may be part of a multi-byte UTF-8 character, so these are not always valid UTF-8
    /// alone. Appended after the older fields: this struct is lent by the library and only grows at
    /// its end, so callers built against an older header keep reading the fields they know.
    pub token_bytes: cs_bytes,
    /// TOKEN with `has_logprobs`: the raw bytes of each alternative, parallel to `top_logprobs`
    /// (`top_logprobs_len` entries; NULL if none).
    pub top_logprobs_bytes: *const cs_bytes,
    /// FINISHED: which stop ended the request (appended like `token_bytes`).
    pub stop_kind: cs_stop_kind,
    /// FINISHED with CS_STOP_EOS or CS_STOP_TOKEN: the token that ended the request; else 0.
    pub stop_token_id: u32,
    /// FINISHED with CS_STOP_STRING: the stop string that matched (NUL-terminated UTF-8, never
    /// part of the text); otherwise NULL.
    pub stop_string: *const c_char,
    /// Length of `stop_string` in bytes, without the terminating NUL (0 when NULL).
    pub stop_string_len: usize,
    /// FINISHED of a request with `tools`: every call the answer made, as a NUL-terminated JSON
    /// array `[{"id", "name", "arguments"}]` (`arguments` is JSON text, an object; `[]` when
    /// none); NULL for requests without tools. An answer that stopped after calling ends with
    /// CS_FINISH_STOP and a non-empty array (OpenAI's finish reason "tool_calls"). TOKEN events
    /// of such a request carry only the text outside calls (call syntax is held back; text held
    /// back that turned out not to be a call comes with the FINISHED event's `text`).
    pub tool_calls: *const c_char,
    /// Length of `tool_calls` in bytes, without the terminating NUL (0 when NULL).
    pub tool_calls_len: usize,
}

/// For a request with tools: its text split into content and calls on the way to C.
pub(crate) struct ToolCallText {
    splitter: ToolCallSplitter,
    calls: Vec<ToolCall>,
}

impl ToolCallText {
    pub(crate) fn new(format: ToolCallFormat) -> Self {
        Self { splitter: ToolCallSplitter::new(format), calls: Vec::new() }
    }
}

/// Owns the bytes a `cs_event` points into. One lives per request and is reused for each
/// event, so streaming does not allocate once the buffers have grown.
#[derive(Default)]
pub(crate) struct EventBuffer {
    text: Vec<u8>,
    top_logprobs: Vec<cs_top_logprob>,
    error_message: Vec<u8>,
    stop_string: Vec<u8>,
    /// The sampled token's bytes, then every alternative's, back to back.
    token_bytes: Vec<u8>,
    /// Views into `token_bytes`, one per alternative.
    top_logprobs_bytes: Vec<cs_bytes>,
    /// The FINISHED event's `tool_calls` JSON, NUL-terminated.
    tool_calls: Vec<u8>,
}

// SAFETY: the only pointers inside (`top_logprobs_bytes`) point into `token_bytes`, a heap
// buffer owned by the same value, so they stay valid wherever the buffer moves; they are
// dereferenced only by C, during the lend documented on `cs_event`.
unsafe impl Send for EventBuffer {}

impl EventBuffer {
    /// The C view of `event`. Its pointers borrow from `self` and stay valid until the next
    /// call to `view` or until `self` is dropped.
    pub(crate) fn view(&mut self, event: &Event) -> cs_event {
        match event {
            Event::Token { id, text, logprobs } => {
                set_c_text(&mut self.text, text);
                self.top_logprobs.clear();
                if let Some(lp) = logprobs {
                    self.top_logprobs.extend(top_logprobs(lp));
                }
                let sampled_bytes = self.set_token_bytes(logprobs.as_ref());
                cs_event {
                    token_id: *id,
                    text: self.text.as_ptr().cast(),
                    text_len: text.len(),
                    has_logprobs: logprobs.is_some(),
                    logprob: logprobs.as_ref().map_or(0.0, |lp| lp.logprob),
                    top_logprobs: if self.top_logprobs.is_empty() { ptr::null() } else { self.top_logprobs.as_ptr() },
                    top_logprobs_len: self.top_logprobs.len(),
                    token_bytes: sampled_bytes,
                    top_logprobs_bytes: if self.top_logprobs_bytes.is_empty() {
                        ptr::null()
                    } else {
                        self.top_logprobs_bytes.as_ptr()
                    },
                    ..blank_event(cs_event_type::CS_EVENT_TOKEN)
                }
            }
            Event::Finished { reason, stop_reason, usage, timings, error } => {
                let error_message = error.as_deref().map_or(ptr::null(), |message| {
                    set_c_text(&mut self.error_message, message);
                    self.error_message.as_ptr().cast()
                });
                let stop_string = stop_reason.stop_string().map_or(ptr::null(), |stop| {
                    set_c_text(&mut self.stop_string, stop);
                    self.stop_string.as_ptr().cast()
                });
                cs_event {
                    finish_reason: (*reason).into(),
                    stop_kind: stop_reason.into(),
                    stop_token_id: stop_reason.token_id().unwrap_or(0),
                    stop_string,
                    stop_string_len: stop_reason.stop_string().map_or(0, str::len),
                    usage: (*usage).into(),
                    timings: (*timings).into(),
                    error_message,
                    ..blank_event(cs_event_type::CS_EVENT_FINISHED)
                }
            }
        }
    }
}

impl EventBuffer {
    /// [`view`](Self::view) for a request that may offer tools: with `tools`, token text goes
    /// through the core's splitter and the FINISHED event carries the calls.
    pub(crate) fn view_split(&mut self, event: &Event, tools: Option<&mut ToolCallText>) -> cs_event {
        let Some(tools) = tools else { return self.view(event) };
        match event {
            Event::Token { id, text, logprobs } => {
                let split = tools.splitter.text(text);
                tools.calls.extend(split.tool_calls);
                self.view(&Event::Token { id: *id, text: split.content, logprobs: logprobs.clone() })
            }
            Event::Finished { .. } => {
                let split = tools.splitter.finish();
                tools.calls.extend(split.tool_calls);
                let mut view = self.view(event);
                set_c_text(&mut self.text, &split.content);
                view.text = self.text.as_ptr().cast();
                view.text_len = split.content.len();
                let json = calls_to_json(&tools.calls);
                set_c_text(&mut self.tool_calls, &json);
                view.tool_calls = self.tool_calls.as_ptr().cast();
                view.tool_calls_len = json.len();
                view
            }
        }
    }

    /// Stores the raw bytes of the sampled token and its alternatives; returns the view of the
    /// sampled token's and leaves the alternatives' in `top_logprobs_bytes`.
    fn set_token_bytes(&mut self, logprobs: Option<&TokenLogprobs>) -> cs_bytes {
        self.token_bytes.clear();
        self.top_logprobs_bytes.clear();
        let Some(lp) = logprobs else { return NO_BYTES };
        // All bytes first, views after: the buffer must not grow once views point into it.
        self.token_bytes.extend_from_slice(&lp.bytes);
        for alternative in &lp.top {
            self.token_bytes.extend_from_slice(&alternative.bytes);
        }
        let mut offset = lp.bytes.len();
        for alternative in &lp.top {
            let end = offset + alternative.bytes.len();
            self.top_logprobs_bytes.push(bytes_view(&self.token_bytes[offset..end]));
            offset = end;
        }
        bytes_view(&self.token_bytes[..lp.bytes.len()])
    }
}

/// The C view of `bytes` (NULL when empty).
fn bytes_view(bytes: &[u8]) -> cs_bytes {
    if bytes.is_empty() {
        NO_BYTES
    } else {
        cs_bytes { data: bytes.as_ptr(), len: bytes.len() }
    }
}

const NO_BYTES: cs_bytes = cs_bytes { data: ptr::null(), len: 0 };

fn blank_event(kind: cs_event_type) -> cs_event {
    cs_event {
        kind,
        token_id: 0,
        text: c"".as_ptr(),
        text_len: 0,
        has_logprobs: false,
        logprob: 0.0,
        top_logprobs: ptr::null(),
        top_logprobs_len: 0,
        finish_reason: cs_finish_reason::CS_FINISH_NONE,
        usage: cs_usage::default(),
        timings: cs_timings::default(),
        error_message: ptr::null(),
        token_bytes: NO_BYTES,
        top_logprobs_bytes: ptr::null(),
        stop_kind: cs_stop_kind::CS_STOP_NONE,
        stop_token_id: 0,
        stop_string: ptr::null(),
        stop_string_len: 0,
        tool_calls: ptr::null(),
        tool_calls_len: 0,
    }
}

/// Stores `text` NUL-terminated in `buffer`, reusing its allocation.
fn set_c_text(buffer: &mut Vec<u8>, text: &str) {
    buffer.clear();
    buffer.extend_from_slice(text.as_bytes());
    buffer.push(0);
}

fn top_logprobs(lp: &TokenLogprobs) -> impl Iterator<Item = cs_top_logprob> + '_ {
    lp.top.iter().map(|t| cs_top_logprob { token_id: t.token_id, logprob: t.logprob })
}

impl From<FinishReason> for cs_finish_reason {
    fn from(reason: FinishReason) -> Self {
        match reason {
            FinishReason::Stop => cs_finish_reason::CS_FINISH_STOP,
            FinishReason::Length => cs_finish_reason::CS_FINISH_LENGTH,
            FinishReason::Cancelled => cs_finish_reason::CS_FINISH_CANCELLED,
            FinishReason::Error => cs_finish_reason::CS_FINISH_ERROR,
        }
    }
}

impl From<&StopReason> for cs_stop_kind {
    fn from(stop: &StopReason) -> Self {
        match stop {
            StopReason::EndOfGeneration(_) => cs_stop_kind::CS_STOP_EOS,
            StopReason::StopTokenId(_) => cs_stop_kind::CS_STOP_TOKEN,
            StopReason::StopString(_) => cs_stop_kind::CS_STOP_STRING,
            StopReason::GrammarComplete => cs_stop_kind::CS_STOP_GRAMMAR,
            StopReason::Length => cs_stop_kind::CS_STOP_LENGTH,
            StopReason::Cancelled => cs_stop_kind::CS_STOP_CANCELLED,
            StopReason::Error => cs_stop_kind::CS_STOP_ERROR,
        }
    }
}

impl From<Usage> for cs_usage {
    fn from(u: Usage) -> Self {
        cs_usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_prompt_tokens: u.cached_prompt_tokens,
        }
    }
}

impl From<Timings> for cs_timings {
    fn from(t: Timings) -> Self {
        cs_timings {
            queued_ns: t.queued_ns,
            time_to_first_token_ns: t.time_to_first_token_ns,
            prefill_ns: t.prefill_ns,
            decode_ns: t.decode_ns,
            per_token_ns: t.per_token_ns,
            total_ns: t.total_ns,
        }
    }
}
