//! What a caller submits ([`Request`], [`SamplingParams`]) and what it gets back
//! ([`Event`], [`FinishReason`], [`Usage`], [`Timings`]).

use serde::{Deserialize, Serialize};

use crate::constraint::Constraint;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use crate::tools::ToolSpec;

/// Largest number of alternatives reported per token, as in OpenAI's `top_logprobs`.
pub const MAX_LOGPROBS: usize = 20;

/// Largest magnitude of a `logit_bias` entry, as in OpenAI's API.
pub const MAX_LOGIT_BIAS: f32 = 100.0;

/// Smallest non-zero temperature: the smallest normal `f32`. The sampler divides logits by
/// the temperature, and below this (subnormal values) `1 / temperature` overflows to infinity,
/// which would turn the most likely token's weight into NaN and pick the least likely one.
pub const MIN_TEMPERATURE: f32 = f32::MIN_POSITIVE;

/// One chat message. Besides role and content, the tool-calling fields Hugging Face templates
/// read: an assistant turn's `tool_calls` (`[{"id", "type": "function", "function": {"name",
/// "arguments": {..}}}]`, passed to the template as given) and a `tool` turn's `tool_call_id`
/// and `name`. Absent fields are undefined in the template, as in `transformers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), tool_calls: None, tool_call_id: None, name: None }
    }

    /// An assistant turn that called tools (`tool_calls` in Hugging Face's shape).
    pub fn with_tool_calls(mut self, tool_calls: Vec<serde_json::Value>) -> Self {
        self.tool_calls = Some(tool_calls);
        self
    }

    /// A `tool` turn answering the call `tool_call_id` (of the function `name`, when known).
    pub fn tool_result(content: impl Into<String>, tool_call_id: impl Into<String>, name: Option<String>) -> Self {
        Self { tool_call_id: Some(tool_call_id.into()), name, ..Self::new("tool", content) }
    }
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Raw text, tokenized without adding special tokens unless the model asks for BOS.
    Text(String),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
    /// Chat messages, rendered with the model's chat template plus the assistant header.
    Chat(Vec<ChatMessage>),
}

impl From<&str> for Prompt {
    fn from(s: &str) -> Self {
        Prompt::Text(s.to_string())
    }
}

impl From<String> for Prompt {
    fn from(s: String) -> Self {
        Prompt::Text(s)
    }
}

impl From<Vec<ChatMessage>> for Prompt {
    fn from(m: Vec<ChatMessage>) -> Self {
        Prompt::Chat(m)
    }
}

/// Sampling and stopping parameters. Defaults follow llama.cpp / OpenAI conventions;
/// [`SamplingParams::validate`] runs at submit and names the offending field.
///
/// This struct's serde derive is the list of sampling options every front door accepts
/// (see [`crate::options::RequestOptions`]): a field added here is an option of the Python,
/// Node and REST doors without touching them; the C struct `cs_sampling_params` adds it by hand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 means greedy; otherwise at least [`MIN_TEMPERATURE`]. Default 0.8 (llama.cpp's default).
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: u32,
    /// Nucleus sampling in (0, 1]; 1 disables it.
    pub top_p: f32,
    /// Min-p in [0, 1]; 0 disables it.
    pub min_p: f32,
    /// Multiplicative penalty on tokens already seen (prompt and output); 1 disables it. Any
    /// finite value > 0; a penalised logit that would overflow saturates at ±`f32::MAX`.
    pub repetition_penalty: f32,
    /// OpenAI presence penalty in [-2, 2].
    pub presence_penalty: f32,
    /// OpenAI frequency penalty in [-2, 2].
    pub frequency_penalty: f32,
    /// How many of the most recent tokens the penalties look at (0 = all).
    pub penalty_last_n: usize,
    /// Seed for this request's RNG; `None` picks one at random.
    pub seed: Option<u64>,
    /// Most tokens to generate; `None` means up to the context window.
    pub max_tokens: Option<usize>,
    /// Strings that end generation; never emitted. Deserialized from one string or a list.
    #[serde(deserialize_with = "crate::options::one_or_many_strings")]
    pub stop: Vec<String>,
    /// Token ids that end generation (in addition to the model's end-of-generation tokens).
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Report the log-probability of each sampled token and this many top alternatives
    /// (`None` = no log-probabilities).
    pub logprobs: Option<usize>,
    /// Added to a token's logit before any other step, as OpenAI's `logit_bias`
    /// (token id, bias in [-100, 100]; -100 in effect bans the token, 100 forces it).
    /// Serialized as OpenAI's map of token id (a decimal string) to bias.
    #[serde(with = "crate::options::logit_bias_map")]
    pub logit_bias: Vec<(u32, f32)>,
    /// Keep the output inside a JSON schema, regex, grammar or list of choices (`None` = free
    /// text). Compiled at submit; see [`crate::constraint`]. Given as one of the constraint
    /// options of [`crate::options::RequestOptions`], not under this name.
    #[serde(skip)]
    pub constraint: Option<Constraint>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            seed: None,
            max_tokens: None,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            logit_bias: Vec::new(),
            constraint: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding (temperature 0, no truncation), handy in tests and benchmarks.
    pub fn greedy() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, ..Self::default() }
    }

    /// Checks every field; the error names the first field that is out of range.
    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        let t = self.temperature;
        if !t.is_finite() || t < 0.0 {
            return Err(Error::invalid("temperature", format!("must be a finite number >= 0, got {t}")));
        }
        if t != 0.0 && t < MIN_TEMPERATURE {
            return Err(Error::invalid(
                "temperature",
                format!("must be 0 (greedy) or at least {MIN_TEMPERATURE:e} (its inverse must be finite), got {t:e}"),
            ));
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return Err(Error::invalid("top_p", format!("must be in (0, 1], got {p}")));
        }
        let m = self.min_p;
        if !(0.0..=1.0).contains(&m) {
            return Err(Error::invalid("min_p", format!("must be in [0, 1], got {m}")));
        }
        let r = self.repetition_penalty;
        if !(r.is_finite() && r > 0.0) {
            return Err(Error::invalid("repetition_penalty", format!("must be > 0, got {r}")));
        }
        for (name, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(Error::invalid(name, format!("must be in [-2, 2], got {v}")));
            }
        }
        if self.max_tokens == Some(0) {
            return Err(Error::invalid("max_tokens", "max_tokens must be at least 1"));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(Error::invalid("stop", "stop strings must not be empty"));
        }
        if let Some(&bad) = self.stop_token_ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(Error::invalid(
                "stop_token_ids",
                format!("token id {bad} is outside the vocabulary (size {vocab_size})"),
            ));
        }
        for &(id, bias) in &self.logit_bias {
            if id as usize >= vocab_size {
                return Err(Error::invalid(
                    "logit_bias",
                    format!("token id {id} is outside the vocabulary (size {vocab_size})"),
                ));
            }
            if !(-MAX_LOGIT_BIAS..=MAX_LOGIT_BIAS).contains(&bias) {
                return Err(Error::invalid(
                    "logit_bias",
                    format!("the bias of token {id} must be in [-100, 100], got {bias}"),
                ));
            }
        }
        if let Some(constraint) = &self.constraint {
            constraint.validate()?;
        }
        if let Some(n) = self.logprobs {
            if n > MAX_LOGPROBS {
                return Err(Error::invalid("logprobs", format!("must be at most {MAX_LOGPROBS}, got {n}")));
            }
        }
        Ok(())
    }
}

/// What the sampler reads of a request's options (see [`SamplingParams`] for each field).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerSettings {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub penalty_last_n: usize,
    pub seed: Option<u64>,
    pub logprobs: Option<usize>,
    pub logit_bias: Vec<(u32, f32)>,
    /// Masks what may be sampled; compiled by the engine at submit.
    pub constraint: Option<Constraint>,
}

/// When generation stops: what the sequence holds of a request's options (see
/// [`SamplingParams`] for each field).
#[derive(Debug, Clone, PartialEq)]
pub struct StopCriteria {
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
}

impl SamplingParams {
    /// The options split by who reads them. Every field is named (no `..`), so a field added
    /// to [`SamplingParams`] does not compile until it is given to the sampler or the stop
    /// criteria.
    pub fn split(self) -> (SamplerSettings, StopCriteria) {
        let SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            penalty_last_n,
            seed,
            max_tokens,
            stop,
            stop_token_ids,
            ignore_eos,
            logprobs,
            logit_bias,
            constraint,
        } = self;
        let sampler = SamplerSettings {
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            penalty_last_n,
            seed,
            logprobs,
            logit_bias,
            constraint,
        };
        (sampler, StopCriteria { max_tokens, stop, stop_token_ids, ignore_eos })
    }
}

impl From<SamplingParams> for SamplerSettings {
    fn from(params: SamplingParams) -> Self {
        params.split().0
    }
}

/// A generation request.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Prompt,
    pub params: SamplingParams,
    /// Higher runs first; equal priorities run in arrival order.
    pub priority: i32,
    /// A caller's label (the server's request id), carried by every log record of the request.
    pub tag: Option<String>,
    /// Tools the model may call (chat prompts only); see [`crate::tools`].
    pub tools: Option<ToolSpec>,
}

impl Request {
    pub fn new(prompt: impl Into<Prompt>, params: SamplingParams) -> Self {
        Self { prompt: prompt.into(), params, priority: 0, tag: None, tools: None }
    }

    /// Labels the request's log records (see [`crate::telemetry`]).
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Offers `tools` to the model (rendered by the chat template, its calls parsed back and,
    /// with `tool_choice` required or named, constrained).
    pub fn with_tools(mut self, tools: ToolSpec) -> Self {
        self.tools = Some(tools);
        self
    }

    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
}

/// Why a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End-of-generation token, a stop token id or a stop string.
    Stop,
    /// `max_tokens` reached or the context window is full.
    Length,
    /// Cancelled by the caller or by engine shutdown.
    Cancelled,
    /// An error ended the request; the `Finished` event's `error` says which.
    Error,
}

impl FinishReason {
    /// The spelling used by OpenAI and the bindings.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error => "error",
        }
    }
}

/// Which stop ended a request: the detail behind [`FinishReason`], as vLLM's `stop_reason`.
/// Every variant maps to one finish reason ([`StopReason::finish_reason`]), so the two never
/// disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The model's end-of-generation token (EOS, or another such as `<end_of_turn>`); its id.
    EndOfGeneration(u32),
    /// One of the request's `stop_token_ids`; which one. Also when that id is an
    /// end-of-generation token too: the request named it.
    StopTokenId(u32),
    /// One of the request's `stop` strings; which one. When several complete in the same
    /// token, the one that starts first in the text (on a tie, the one listed first).
    StopString(String),
    /// The output constraint (JSON schema, regex, grammar, choices) accepts no more tokens.
    GrammarComplete,
    /// `max_tokens` reached, or the context window (or the KV cache) is full.
    Length,
    /// Cancelled by the caller, a consumer that went away, or engine shutdown.
    Cancelled,
    /// An error ended the request; the `Finished` event's `error` says which.
    Error,
}

impl StopReason {
    /// The OpenAI-style finish reason this stop belongs to.
    pub fn finish_reason(&self) -> FinishReason {
        match self {
            StopReason::EndOfGeneration(_)
            | StopReason::StopTokenId(_)
            | StopReason::StopString(_)
            | StopReason::GrammarComplete => FinishReason::Stop,
            StopReason::Length => FinishReason::Length,
            StopReason::Cancelled => FinishReason::Cancelled,
            StopReason::Error => FinishReason::Error,
        }
    }

    /// The variant's name as every binding spells it: `eos`, `stop_token`, `stop_string`,
    /// `grammar`, `length`, `cancelled` or `error`.
    pub fn kind(&self) -> &'static str {
        match self {
            StopReason::EndOfGeneration(_) => "eos",
            StopReason::StopTokenId(_) => "stop_token",
            StopReason::StopString(_) => "stop_string",
            StopReason::GrammarComplete => "grammar",
            StopReason::Length => "length",
            StopReason::Cancelled => "cancelled",
            StopReason::Error => "error",
        }
    }

    /// The token that ended the request (`eos` and `stop_token`).
    pub fn token_id(&self) -> Option<u32> {
        match self {
            StopReason::EndOfGeneration(id) | StopReason::StopTokenId(id) => Some(*id),
            _ => None,
        }
    }

    /// The stop string that ended the request (`stop_string`).
    pub fn stop_string(&self) -> Option<&str> {
        match self {
            StopReason::StopString(stop) => Some(stop),
            _ => None,
        }
    }
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache instead of a prefill.
    pub cached_prompt_tokens: usize,
}

impl Usage {
    pub fn total_tokens(&self) -> usize {
        self.prompt_tokens + self.completion_tokens
    }
}

/// Nanosecond timings of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// Submit until first scheduled.
    pub queued_ns: u64,
    /// Submit until the first token was sampled.
    pub time_to_first_token_ns: u64,
    /// Prompt processing time (first scheduled until the first token).
    pub prefill_ns: u64,
    /// First token until the end.
    pub decode_ns: u64,
    /// Mean time per generated token after the first (0 with fewer than two tokens).
    pub per_token_ns: u64,
    /// Submit until the end.
    pub total_ns: u64,
}

/// A top alternative at one position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token_id: u32,
    pub logprob: f32,
    /// The token's raw bytes (OpenAI's `bytes`). A byte-level BPE token may be part of a
    /// multi-byte UTF-8 character, so these are not always valid UTF-8 on their own; they are
    /// what decoding the token alone as text would lose.
    #[serde(default)]
    pub bytes: Vec<u8>,
}

/// Log-probabilities of one sampled token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobs {
    pub logprob: f32,
    pub top: Vec<TopLogprob>,
    /// The sampled token's raw bytes (see [`TopLogprob::bytes`]).
    #[serde(default)]
    pub bytes: Vec<u8>,
}

impl TokenLogprobs {
    /// Sets the raw bytes of the sampled token and of every alternative. The sampler knows
    /// only ids; the engine, which owns the tokenizer, calls this before the event leaves.
    pub(crate) fn fill_bytes(&mut self, sampled: u32, tokenizer: &Tokenizer) {
        let bytes_of = |id: u32| tokenizer.token_bytes(id).unwrap_or_default().to_vec();
        self.bytes = bytes_of(sampled);
        for alternative in &mut self.top {
            alternative.bytes = bytes_of(alternative.token_id);
        }
    }
}

/// One item of a request's event stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A sampled token. `text` is the newly safe-to-show text: whole UTF-8 characters only,
    /// nothing that could still be part of a stop string. It may be empty (held back) and a
    /// later event may carry text of several tokens.
    Token { id: u32, text: String, logprobs: Option<TokenLogprobs> },
    /// The last event of every request.
    Finished {
        reason: FinishReason,
        /// Which stop ended the request (`reason` is always `stop_reason.finish_reason()`).
        stop_reason: StopReason,
        usage: Usage,
        timings: Timings,
        /// Set when `reason` is `Error`.
        error: Option<String>,
    },
}
