//! JavaScript option objects -> core [`EngineConfig`] and [`Request`].
//!
//! Only conversion happens here; names, types and ranges of engine settings and of a request's
//! options are checked by the core so every front door reports the same messages. JavaScript
//! has one number type: a whole number is an integer, so a fraction, a negative count or an
//! unsafe integer is an invalid value for its option (rather than being silently truncated or
//! wrapped).

use cortexstream::{ChatMessage, EngineConfig, Error, OptionValue, Prompt, Request, RequestOptions};
use napi::bindgen_prelude::{Either, JsObjectValue, Null, Object, Unknown};
use napi::{JsValue, ValueType};
use napi_derive::napi;

use crate::naming::snake_case;

/// Largest integer a JavaScript number holds exactly (`Number.MAX_SAFE_INTEGER`).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// `new Engine(options)` after the JavaScript side filled in the default model paths: the one
/// conversion of a JavaScript settings object. `model` is taken out; the other names go to the
/// core in snake_case, which reads them (names, types, ranges) as it does for every door.
pub fn engine_config(options: &Unknown<'_>) -> napi::Result<Result<EngineConfig, Error>> {
    let entries = match snake_case_entries(options)? {
        Ok(entries) => entries,
        Err(error) => return Ok(Err(error)),
    };
    let (model, settings) = take_model(entries);
    Ok(model.and_then(|model| EngineConfig::from_settings(model, OptionValue::Map(settings))))
}

/// The entries of a JavaScript object, names in the core's snake_case; not an object is an
/// invalid `options`.
pub fn snake_case_entries(options: &Unknown<'_>) -> napi::Result<Result<Vec<(String, OptionValue)>, Error>> {
    Ok(match option_value(options)? {
        OptionValue::Map(entries) => Ok(entries.into_iter().map(|(name, value)| (snake_case(&name), value)).collect()),
        OptionValue::Null => Ok(Vec::new()),
        _ => Err(Error::invalid("options", "must be an object")),
    })
}

/// Splits the required string `model` from the other entries.
pub fn take_model(entries: Vec<(String, OptionValue)>) -> (Result<String, Error>, Vec<(String, OptionValue)>) {
    let (model, rest): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(name, _)| name == "model");
    let model = match model.into_iter().next().map(|(_, value)| value) {
        Some(OptionValue::Str(path)) => Ok(path),
        _ => Err(Error::invalid("model", "must be a path (a string)")),
    };
    (model, rest)
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
pub fn option_value(value: &Unknown<'_>) -> napi::Result<OptionValue> {
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
