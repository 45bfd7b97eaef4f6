//! JavaScript option objects -> core [`EngineConfig`] and [`Request`].
//!
//! Only conversion happens here; names, types and ranges of a request's options are checked by
//! the core so every front door reports the same messages. JavaScript has one number type, so
//! integer engine options arrive as `f64` and a fraction, a negative count or an unsafe integer
//! is an invalid value for that option (rather than being silently truncated or wrapped).

use std::path::PathBuf;

use cortexstream::{ChatMessage, EngineConfig, Error, OptionValue, Prompt, Request, RequestOptions};
use napi::bindgen_prelude::{Either, JsObjectValue, Null, Object, Unknown};
use napi::{JsValue, ValueType};
use napi_derive::napi;

use crate::naming::snake_case;

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
    pub target_step_ms: Option<f64>,
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
        if let Some(ms) = self.target_step_ms {
            config.set_target_step_ms(ms);
        }
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

/// Builds the request from the JavaScript options object: the one conversion of JavaScript
/// values to the core's options. The core reads them (names, types) and checks the ranges, so
/// the messages are the same at every door; only the top-level names are camelCase here.
pub fn request(prompt: Prompt, options: Option<Unknown<'_>>) -> napi::Result<Result<Request, Error>> {
    let value = match options {
        None => OptionValue::Null,
        Some(options) => match option_value(&options)? {
            OptionValue::Map(entries) => {
                OptionValue::Map(entries.into_iter().map(|(name, value)| (snake_case(&name), value)).collect())
            }
            other => other,
        },
    };
    Ok(RequestOptions::from_value(value).map(|options| options.into_request(prompt)))
}

/// A JavaScript value as the core's language-neutral value. A whole number within
/// `Number.MAX_SAFE_INTEGER` is an integer (JavaScript has one number type); a larger one stays
/// a float so that a count refuses it instead of rounding it. Functions, symbols and bigints
/// take no option: `Unsupported`, so the core's error names the field they were in.
fn option_value(value: &Unknown<'_>) -> napi::Result<OptionValue> {
    // SAFETY (every `cast` below): each casts to the type `get_type` reported, as `cast` requires.
    Ok(match value.get_type()? {
        ValueType::Undefined | ValueType::Null => OptionValue::Null,
        ValueType::Boolean => OptionValue::Bool(unsafe { value.cast::<bool>() }?),
        ValueType::Number => number(unsafe { value.cast::<f64>() }?),
        ValueType::String => OptionValue::Str(unsafe { value.cast::<String>() }?),
        ValueType::Object => {
            let object = unsafe { value.cast::<Object<'_>>() }?;
            if object.is_array()? {
                let items =
                    (0..object.get_array_length()?).map(|i| option_value(&object.get_element::<Unknown<'_>>(i)?));
                OptionValue::List(items.collect::<napi::Result<_>>()?)
            } else {
                let names = object.get_property_names()?;
                let entries = (0..names.get_array_length()?).map(|i| {
                    let name: String = names.get_element(i)?;
                    Ok((name.clone(), option_value(&object.get_named_property::<Unknown<'_>>(&name)?)?))
                });
                OptionValue::Map(entries.collect::<napi::Result<_>>()?)
            }
        }
        other => OptionValue::Unsupported(format!("{other:?}").to_lowercase()),
    })
}

fn number(value: f64) -> OptionValue {
    if value.fract() == 0.0 && value.abs() <= MAX_SAFE_INTEGER {
        OptionValue::Int(value as i128)
    } else {
        OptionValue::Float(value)
    }
}

/// A JavaScript number that must be a whole number representable as `T`.
pub fn whole<T: TryFrom<i64>>(value: f64, param: &'static str) -> Result<T, Error> {
    if value.fract() != 0.0 || value.abs() > MAX_SAFE_INTEGER {
        return Err(Error::invalid(param, format!("must be a safe integer, got {value}")));
    }
    T::try_from(value as i64).map_err(|_| Error::invalid(param, format!("{value} is out of range")))
}
