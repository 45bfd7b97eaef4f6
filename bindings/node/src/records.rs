//! Plain JavaScript objects built from the core's results (field names become camelCase).

use cortexstream::tools::{finish_reason, parse_tool_calls, ToolCallSplitter};
use cortexstream::{Event, FinishReason, ToolCallFormat};
use napi_derive::napi;

/// Token counts of one request.
#[napi(object)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub cached_prompt_tokens: u32,
}

impl From<cortexstream::Usage> for Usage {
    fn from(usage: cortexstream::Usage) -> Self {
        // Token counts are bounded by the context window, far below u32::MAX.
        let count = |n: usize| n as u32;
        Self {
            prompt_tokens: count(usage.prompt_tokens),
            completion_tokens: count(usage.completion_tokens),
            total_tokens: count(usage.total_tokens()),
            cached_prompt_tokens: count(usage.cached_prompt_tokens),
        }
    }
}

/// Nanosecond timings of one request (numbers: exact up to 104 days).
#[napi(object)]
pub struct Timings {
    pub queued_ns: f64,
    pub time_to_first_token_ns: f64,
    pub prefill_ns: f64,
    pub decode_ns: f64,
    pub per_token_ns: f64,
    pub total_ns: f64,
}

impl From<cortexstream::Timings> for Timings {
    fn from(t: cortexstream::Timings) -> Self {
        Self {
            queued_ns: t.queued_ns as f64,
            time_to_first_token_ns: t.time_to_first_token_ns as f64,
            prefill_ns: t.prefill_ns as f64,
            decode_ns: t.decode_ns as f64,
            per_token_ns: t.per_token_ns as f64,
            total_ns: t.total_ns as f64,
        }
    }
}

/// One alternative at a position.
#[napi(object)]
pub struct TopLogprob {
    pub token_id: u32,
    pub logprob: f64,
    /// The token's raw bytes (an array of numbers, as OpenAI's `bytes`): a byte-level token
    /// may be part of a multi-byte character, so not always valid UTF-8 alone.
    pub bytes: Vec<u8>,
}

/// Log-probability of a sampled token and its top alternatives.
#[napi(object)]
pub struct TokenLogprobs {
    pub token_id: u32,
    pub logprob: f64,
    /// The sampled token's raw bytes (see [`TopLogprob::bytes`]).
    pub bytes: Vec<u8>,
    pub top: Vec<TopLogprob>,
}

impl TokenLogprobs {
    fn new(token_id: u32, logprobs: &cortexstream::TokenLogprobs) -> Self {
        Self {
            token_id,
            logprob: f64::from(logprobs.logprob),
            bytes: logprobs.bytes.clone(),
            top: logprobs
                .top
                .iter()
                .map(|t| TopLogprob { token_id: t.token_id, logprob: f64::from(t.logprob), bytes: t.bytes.clone() })
                .collect(),
        }
    }
}

/// A call the model made; `arguments` is JSON text (an object), as OpenAI returns it.
#[napi(object)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

impl From<cortexstream::ToolCall> for ToolCall {
    fn from(call: cortexstream::ToolCall) -> Self {
        Self { id: call.id, name: call.name, arguments: call.arguments }
    }
}

fn tool_calls(calls: Vec<cortexstream::ToolCall>) -> Vec<ToolCall> {
    calls.into_iter().map(ToolCall::from).collect()
}

/// Which stop ended a request (`stopReason`): `kind` is the core's name for it; `tokenId` is set
/// for `eos` and `stop_token`, `stopString` for `stop_string`.
#[napi(object)]
pub struct StopReason {
    pub kind: String,
    pub token_id: Option<u32>,
    pub stop_string: Option<String>,
}

impl From<&cortexstream::StopReason> for StopReason {
    fn from(stop: &cortexstream::StopReason) -> Self {
        Self {
            kind: stop.kind().to_owned(),
            token_id: stop.token_id(),
            stop_string: stop.stop_string().map(str::to_owned),
        }
    }
}

/// One item of a request's stream: a token's text, or (last) how the request ended.
#[napi(object)]
pub struct Chunk {
    pub text: String,
    pub token_id: Option<u32>,
    pub logprobs: Option<TokenLogprobs>,
    /// Set on the last chunk only.
    pub finish_reason: Option<String>,
    /// Set on the last chunk only.
    pub stop_reason: Option<StopReason>,
    pub usage: Option<Usage>,
    pub timings: Option<Timings>,
    pub error: Option<String>,
    /// Calls completed by this chunk (requests with tools only).
    pub tool_calls: Option<Vec<ToolCall>>,
}

impl Chunk {
    /// For a request with tools: the chunk's text through the core's splitter, so it carries
    /// content and completed calls, and the last one "tool_calls" if the answer called.
    pub fn split_tool_calls(&mut self, splitter: &mut ToolCallSplitter, event: &Event) {
        let split = match event {
            Event::Token { text, .. } => splitter.text(text),
            Event::Finished { .. } => splitter.finish(),
        };
        self.text = split.content;
        self.tool_calls = Some(tool_calls(split.tool_calls));
        if let Event::Finished { reason, .. } = event {
            self.finish_reason = Some(finish_reason(*reason, splitter.made_calls()).to_owned());
        }
    }
}

impl From<&Event> for Chunk {
    fn from(event: &Event) -> Self {
        match event {
            Event::Token { id, text, logprobs } => Chunk {
                text: text.clone(),
                token_id: Some(*id),
                logprobs: logprobs.as_ref().map(|l| TokenLogprobs::new(*id, l)),
                finish_reason: None,
                stop_reason: None,
                usage: None,
                timings: None,
                error: None,
                tool_calls: None,
            },
            Event::Finished { reason, stop_reason, usage, timings, error } => Chunk {
                text: String::new(),
                token_id: None,
                logprobs: None,
                finish_reason: Some(reason.as_str().to_owned()),
                stop_reason: Some(stop_reason.into()),
                usage: Some((*usage).into()),
                timings: Some((*timings).into()),
                error: error.clone(),
                tool_calls: None,
            },
        }
    }
}

/// The whole result of one request, gathered by the core's `CompletionBuilder` on the engine
/// thread and converted once, so JavaScript never rebuilds it from the chunks.
#[napi(object)]
pub struct Completion {
    pub text: String,
    /// Every sampled token, including an end-of-generation token that ended the request.
    pub token_ids: Vec<u32>,
    pub finish_reason: String,
    pub stop_reason: StopReason,
    pub usage: Usage,
    pub timings: Timings,
    /// One entry per token when log-probabilities were requested (even if empty), else unset.
    pub logprobs: Option<Vec<TokenLogprobs>>,
    pub error: Option<String>,
    /// The calls the answer made (requests with tools only; `text` is then the answer without
    /// them and `finishReason` "tool_calls" if it stopped after calling).
    pub tool_calls: Option<Vec<ToolCall>>,
}

impl Completion {
    /// For a request with tools: the text split into content and the calls written in `format`.
    pub fn split_tool_calls(&mut self, format: ToolCallFormat, reason: FinishReason) {
        let parsed = parse_tool_calls(format, &self.text);
        self.finish_reason = finish_reason(reason, !parsed.tool_calls.is_empty()).to_owned();
        if !parsed.tool_calls.is_empty() {
            self.text = parsed.content;
        }
        self.tool_calls = Some(tool_calls(parsed.tool_calls));
    }

    /// `wants_logprobs`: whether the request asked for them, which an empty list cannot tell.
    pub fn new(completion: cortexstream::Completion, wants_logprobs: bool) -> Self {
        let logprobs = wants_logprobs.then(|| {
            // The core keeps one logprobs entry per sampled token, in token order.
            completion.token_ids.iter().zip(&completion.logprobs).map(|(&id, l)| TokenLogprobs::new(id, l)).collect()
        });
        Self {
            text: completion.text,
            token_ids: completion.token_ids,
            finish_reason: completion.finish_reason.as_str().to_owned(),
            stop_reason: (&completion.stop_reason).into(),
            usage: completion.usage.into(),
            timings: completion.timings.into(),
            logprobs,
            error: completion.error,
            tool_calls: None,
        }
    }
}

/// The embedding model, when one is loaded.
#[napi(object)]
pub struct EmbeddingInfo {
    pub name: String,
    pub path: String,
    pub dim: u32,
    pub max_tokens: u32,
}

/// What the engine has loaded.
#[napi(object)]
pub struct ModelInfo {
    pub name: String,
    pub path: String,
    pub architecture: String,
    pub context_length: u32,
    pub vocab_size: u32,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub embedding: Option<EmbeddingInfo>,
}

impl From<&cortexstream::ModelInfo> for ModelInfo {
    fn from(info: &cortexstream::ModelInfo) -> Self {
        Self {
            name: info.name.clone(),
            path: info.path.display().to_string(),
            architecture: info.architecture.clone(),
            context_length: info.context_length as u32,
            vocab_size: info.vocab_size as u32,
            bos_token_id: info.bos_token_id,
            eos_token_id: info.eos_token_id,
            embedding: info.embedding.as_ref().map(|e| EmbeddingInfo {
                name: e.name.clone(),
                path: e.path.display().to_string(),
                dim: e.dim as u32,
                max_tokens: e.max_tokens as u32,
            }),
        }
    }
}
