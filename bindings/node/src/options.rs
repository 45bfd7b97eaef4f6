//! JavaScript option objects -> core [`EngineConfig`] and [`Request`].
//!
//! Only conversion happens here; ranges are checked by the core so every front door reports
//! the same messages. JavaScript has one number type, so integer options arrive as `f64` and
//! a fraction, a negative count or an unsafe integer is an invalid value for that option
//! (rather than being silently truncated or wrapped).

use std::collections::HashMap;
use std::path::PathBuf;

use cortexstream::{ChatMessage, Constraint, EngineConfig, Error, Prompt, Request, SamplingParams, ToolSpec};
use napi::bindgen_prelude::{Either, Null};
use napi_derive::napi;

/// Largest integer a JavaScript number holds exactly (`Number.MAX_SAFE_INTEGER`).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// `new Engine(options)` after the JavaScript side filled in the default model paths.
#[napi(object)]
pub struct EngineOptions {
    pub model: String,
    pub tokenizer: Option<String>,
    pub embedding_model: Option<String>,
    pub max_running: Option<f64>,
    pub max_batch_tokens: Option<f64>,
    pub kv_cache_tokens: Option<f64>,
    pub block_size: Option<f64>,
    pub context_length: Option<f64>,
    pub threads: Option<f64>,
    pub max_queue: Option<f64>,
    pub chat_template: Option<String>,
}

impl EngineOptions {
    /// The core configuration; unset options keep the core's defaults.
    pub fn into_config(self) -> Result<EngineConfig, Error> {
        let mut config = EngineConfig::new(self.model);
        config.tokenizer = self.tokenizer.map(PathBuf::from);
        config.embedding_model = self.embedding_model.map(PathBuf::from);
        config.context_length = self.context_length.map(|v| whole(v, "contextLength")).transpose()?;
        config.threads = self.threads.map(|v| whole(v, "threads")).transpose()?;
        config.chat_template = self.chat_template;
        for (slot, value, name) in [
            (&mut config.max_running, self.max_running, "maxRunning"),
            (&mut config.max_batch_tokens, self.max_batch_tokens, "maxBatchTokens"),
            (&mut config.kv_cache_tokens, self.kv_cache_tokens, "kvCacheTokens"),
            (&mut config.block_size, self.block_size, "blockSize"),
            (&mut config.max_queue, self.max_queue, "maxQueue"),
        ] {
            if let Some(value) = value {
                *slot = whole(value, name)?;
            }
        }
        Ok(config)
    }
}

/// Sampling and stopping options of one request (`signal` is handled in JavaScript).
#[napi(object)]
pub struct GenerateOptions {
    pub max_tokens: Option<f64>,
    pub temperature: Option<f64>,
    pub top_k: Option<f64>,
    pub top_p: Option<f64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub penalty_last_n: Option<f64>,
    pub seed: Option<f64>,
    pub stop: Option<Either<String, Vec<String>>>,
    pub stop_token_ids: Option<Vec<f64>>,
    pub ignore_eos: Option<bool>,
    pub logprobs: Option<f64>,
    pub priority: Option<f64>,
    /// OpenAI's `logit_bias`: token id (as an object key) -> bias in [-100, 100].
    pub logit_bias: Option<HashMap<String, f64>>,
    // At most one of the five output constraints below (see `constraint`).
    /// A JSON schema the output validates against (an object or JSON text).
    pub json_schema: Option<serde_json::Value>,
    /// A regular expression the whole output matches.
    pub regex: Option<String>,
    /// A Lark grammar (llguidance's dialect) the output follows.
    pub grammar: Option<String>,
    /// The output is exactly one of these strings.
    pub choices: Option<Vec<String>>,
    /// OpenAI's `response_format` object (`{type: 'json_object'}`, `{type: 'json_schema', ...}`).
    pub response_format: Option<serde_json::Value>,
    /// Tools the model may call (chat only): OpenAI's `[{type: 'function', function: {...}}]`.
    pub tools: Option<serde_json::Value>,
    /// `'none'`, `'auto'` (default), `'required'` or `{type: 'function', function: {name}}`.
    pub tool_choice: Option<serde_json::Value>,
    /// More than one call per answer (default true).
    pub parallel_tool_calls: Option<bool>,
}

/// The request's constraint from whichever of the constraint options is set; two of them are
/// an invalid request naming the second (JS spelling).
fn constraint(o: &mut GenerateOptions) -> Result<Option<Constraint>, Error> {
    let mut given: Vec<(&'static str, Option<Constraint>)> = Vec::new();
    if let Some(schema) = o.json_schema.take() {
        let text = match schema {
            serde_json::Value::String(text) => text,
            serde_json::Value::Object(_) | serde_json::Value::Bool(_) => schema.to_string(),
            other => {
                return Err(Error::invalid("jsonSchema", format!("must be an object or a JSON string, got {other}")))
            }
        };
        given.push(("jsonSchema", Some(Constraint::JsonSchema(text))));
    }
    if let Some(pattern) = o.regex.take() {
        given.push(("regex", Some(Constraint::Regex(pattern))));
    }
    if let Some(lark) = o.grammar.take() {
        given.push(("grammar", Some(Constraint::Grammar(lark))));
    }
    if let Some(choices) = o.choices.take() {
        given.push(("choices", Some(Constraint::Choices(choices))));
    }
    if let Some(format) = o.response_format.take() {
        given.push(("responseFormat", Constraint::from_response_format(&format)?));
    }
    if let Some((second, _)) = given.get(1) {
        return Err(Error::invalid(
            second,
            "only one of jsonSchema, regex, grammar, choices and responseFormat may be given",
        ));
    }
    Ok(given.pop().and_then(|(_, constraint)| constraint))
}

/// One chat message, with the tool fields of an assistant turn that called tools
/// (`toolCalls`, OpenAI's `[{id, type, function: {name, arguments}}]`) and of a `tool` turn
/// answering one (`toolCallId`, `name`).
#[napi(object)]
pub struct Message {
    pub role: String,
    /// May be null on an assistant turn that only called tools.
    pub content: Option<Either<String, Null>>,
    pub tool_calls: Option<Vec<serde_json::Value>>,
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

impl From<Message> for ChatMessage {
    fn from(message: Message) -> Self {
        let content = match message.content {
            Some(Either::A(text)) => text,
            Some(Either::B(Null)) | None => String::new(),
        };
        let mut chat = ChatMessage::new(message.role, content);
        chat.tool_calls = message.tool_calls;
        chat.tool_call_id = message.tool_call_id;
        chat.name = message.name;
        chat
    }
}

/// A text prompt or token ids.
pub fn raw_prompt(prompt: Either<String, Vec<f64>>) -> Result<Prompt, Error> {
    match prompt {
        Either::A(text) => Ok(Prompt::Text(text)),
        Either::B(ids) => ids.into_iter().map(|id| whole(id, "prompt")).collect::<Result<_, _>>().map(Prompt::Tokens),
    }
}

/// Builds the request; unset options keep the core's defaults.
pub fn request(prompt: Prompt, options: Option<GenerateOptions>) -> Result<Request, Error> {
    let Some(mut o) = options else { return Ok(Request::new(prompt, SamplingParams::default())) };
    let tools = ToolSpec::from_options(o.tools.as_ref(), o.tool_choice.as_ref(), o.parallel_tool_calls)?;
    let mut p = SamplingParams { constraint: constraint(&mut o)?, ..SamplingParams::default() };
    for (slot, value) in [
        (&mut p.temperature, o.temperature),
        (&mut p.top_p, o.top_p),
        (&mut p.min_p, o.min_p),
        (&mut p.repetition_penalty, o.repetition_penalty),
        (&mut p.presence_penalty, o.presence_penalty),
        (&mut p.frequency_penalty, o.frequency_penalty),
    ] {
        if let Some(value) = value {
            *slot = value as f32;
        }
    }
    if let Some(v) = o.top_k {
        p.top_k = whole(v, "topK")?;
    }
    if let Some(v) = o.penalty_last_n {
        p.penalty_last_n = whole(v, "penaltyLastN")?;
    }
    p.seed = o.seed.map(|v| whole(v, "seed")).transpose()?;
    p.max_tokens = o.max_tokens.map(|v| whole(v, "maxTokens")).transpose()?;
    p.logprobs = o.logprobs.map(|v| whole(v, "logprobs")).transpose()?;
    p.ignore_eos = o.ignore_eos.unwrap_or(false);
    p.stop = match o.stop {
        None => Vec::new(),
        Some(Either::A(single)) => vec![single],
        Some(Either::B(many)) => many,
    };
    p.stop_token_ids = o
        .stop_token_ids
        .unwrap_or_default()
        .into_iter()
        .map(|id| whole(id, "stopTokenIds"))
        .collect::<Result<_, _>>()?;
    p.logit_bias = o
        .logit_bias
        .unwrap_or_default()
        .into_iter()
        .map(|(id, bias)| {
            let id = id.trim().parse::<u32>().map_err(|_| {
                Error::invalid("logit_bias", format!("keys must be token ids (whole numbers), got {id:?}"))
            })?;
            Ok((id, bias as f32))
        })
        .collect::<Result<_, Error>>()?;
    let priority = o.priority.map(|v| whole(v, "priority")).transpose()?.unwrap_or(0);
    let request = Request::new(prompt, p).with_priority(priority);
    Ok(match tools {
        Some(tools) => request.with_tools(tools),
        None => request,
    })
}

/// A JavaScript number that must be a whole number representable as `T`.
pub fn whole<T: TryFrom<i64>>(value: f64, param: &'static str) -> Result<T, Error> {
    if value.fract() != 0.0 || value.abs() > MAX_SAFE_INTEGER {
        return Err(Error::invalid(param, format!("must be a safe integer, got {value}")));
    }
    T::try_from(value as i64).map_err(|_| Error::invalid(param, format!("{value} is out of range")))
}
