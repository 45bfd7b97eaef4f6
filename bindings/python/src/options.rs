//! Python arguments → core [`Request`]: the prompt forms and the sampling keyword arguments.
//!
//! Only conversion happens here. The sampling keywords become one core [`OptionValue`]; the
//! core reads it (types, unknown names) and checks the ranges at submit, so every front door
//! reports the same field names and messages. A prompt or messages of the wrong Python type
//! is a `TypeError` naming the argument.

use cortexstream::{ChatMessage, EngineConfig, OptionValue, Prompt, Request, RequestOptions};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType};

use crate::errors::to_py_err;
use crate::tools::message_fields;

/// A text or token-id prompt (`str | list[int]`).
pub fn raw_prompt(prompt: &Bound<'_, PyAny>) -> PyResult<Prompt> {
    if prompt.is_instance_of::<PyString>() {
        return Ok(Prompt::Text(prompt.extract()?));
    }
    // `bytes` is a sequence of ints, so it would pass as token ids; text must be decoded first.
    if prompt.is_instance_of::<PyBytes>() || prompt.is_instance_of::<PyByteArray>() {
        return Err(type_error("prompt", "str or list[int] (decode bytes first)", prompt));
    }
    prompt.extract::<Vec<u32>>().map(Prompt::Tokens).map_err(|_| type_error("prompt", "str or list[int]", prompt))
}

/// Chat messages: a list of dicts with string `role` and `content`.
pub fn chat_messages(messages: &Bound<'_, PyAny>) -> PyResult<Vec<ChatMessage>> {
    let items: Vec<Bound<'_, PyDict>> = typed(messages, "messages", "a list of dicts")?;
    items.iter().map(message).collect()
}

fn message(item: &Bound<'_, PyDict>) -> PyResult<ChatMessage> {
    // A missing key is a malformed message, as a missing field is for a typed dict.
    let field = |key: &str| -> PyResult<String> {
        let expected = format!("dicts with a str `{key}`");
        match item.get_item(key)? {
            Some(value) => typed(&value, "messages", &expected),
            None => Err(PyTypeError::new_err(format!("`messages` must be {expected}, a message has no `{key}`"))),
        }
    };
    // An assistant turn that only called tools has `content: None` in OpenAI's shape.
    let only_calls = item.get_item("tool_calls")?.is_some_and(|calls| !calls.is_none())
        && item.get_item("content")?.is_none_or(|content| content.is_none());
    let content = if only_calls { String::new() } else { field("content")? };
    let mut message = ChatMessage::new(field("role")?, content);
    message_fields(item, &mut message)?;
    Ok(message)
}

/// Builds the request from a prompt and the sampling keyword arguments: the one conversion of
/// Python values to the core's options. The core names the field of any bad value, rejects
/// unknown keywords, and treats `None` as the default (so callers can forward optional fields).
pub fn request(prompt: Prompt, sampling: Option<&Bound<'_, PyDict>>) -> PyResult<Request> {
    Ok(request_options(sampling)?.into_request(prompt))
}

fn request_options(sampling: Option<&Bound<'_, PyDict>>) -> PyResult<RequestOptions> {
    let entries = match sampling {
        None => Vec::new(),
        Some(kwargs) => kwargs.iter().map(|(key, value)| keyword(key.extract()?, &value)).collect::<PyResult<_>>()?,
    };
    RequestOptions::from_value(OptionValue::Map(entries)).map_err(to_py_err)
}

/// Every option name a request takes (`Sampling`'s keys), from the core's one definition.
#[pyfunction]
pub fn option_names() -> Vec<&'static str> {
    RequestOptions::field_names()
}

/// Checks options given ahead of any request and any model (a server config file's default
/// sampling): names, types and every range that does not depend on the vocabulary; token ids
/// (`stop_token_ids`, `logit_bias`) are checked against the model at submit. Raises
/// `InvalidRequestError` naming the field, with the words a request's error would use.
#[pyfunction]
pub fn check_options(options: &Bound<'_, PyDict>) -> PyResult<()> {
    let options = request_options(Some(options))?;
    // No vocabulary yet: every token id is in range for now.
    options.sampling.validate(usize::MAX).map_err(to_py_err)
}

/// Every engine setting's name, in `EngineConfig`'s field order: the core's one definition
/// (what `Engine(...)` and `Registry.register(...)` take as keywords).
#[pyfunction]
pub fn engine_setting_names() -> Vec<&'static str> {
    EngineConfig::setting_names()
}

/// Checks engine settings given ahead of any model (a server config file's `[engine]`): names,
/// types and ranges exactly as `Engine(...)` checks them, except the KV cache against a model's
/// shape. Raises `InvalidRequestError` naming the setting, in the core's words.
#[pyfunction]
pub fn check_engine_settings(settings: &Bound<'_, PyDict>) -> PyResult<()> {
    let entries = kwargs_entries(Some(settings))?;
    EngineConfig::from_settings(std::path::PathBuf::new(), OptionValue::Map(entries)).map(|_| ()).map_err(to_py_err)
}

/// Keyword arguments as the entries of the core's map value (`None`: none), for the engine
/// settings and registrations the core reads.
pub fn kwargs_entries(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<(String, OptionValue)>> {
    match kwargs {
        None => Ok(Vec::new()),
        Some(kwargs) => kwargs.iter().map(|(key, value)| Ok((key.extract()?, option_value(&value)?))).collect(),
    }
}

/// One keyword argument. A Pydantic model class stands for its JSON schema (as the `openai`
/// client's `parse()` takes it), under `json_schema` whether given as that or `response_format`.
fn keyword(key: String, value: &Bound<'_, PyAny>) -> PyResult<(String, OptionValue)> {
    if is_pydantic_model(value) && (key == "json_schema" || key == "response_format") {
        return Ok(("json_schema".to_owned(), option_value(&value.call_method0("model_json_schema")?)?));
    }
    Ok((key, option_value(value)?))
}

fn is_pydantic_model(value: &Bound<'_, PyAny>) -> bool {
    value.is_instance_of::<PyType>() && value.hasattr("model_json_schema").unwrap_or(false)
}

/// A Python value as the core's language-neutral value. A path (`os.PathLike`) is its text.
/// Types with no JSON form (bytes, sets, arbitrary objects) become `Unsupported` so the core's
/// error names the field they were in.
pub fn option_value(value: &Bound<'_, PyAny>) -> PyResult<OptionValue> {
    if !value.is_instance_of::<PyString>() && value.hasattr("__fspath__").unwrap_or(false) {
        let path = value.call_method0("__fspath__")?;
        return option_value(&path);
    }
    Ok(if value.is_none() {
        OptionValue::Null
    } else if let Ok(b) = value.cast::<PyBool>() {
        OptionValue::Bool(b.is_true())
    } else if value.is_instance_of::<PyInt>() {
        // Not shown: an int of thousands of digits would make a message as long.
        value
            .extract::<i128>()
            .map_or_else(|_| OptionValue::Unsupported("an integer past 128 bits".into()), OptionValue::Int)
    } else if value.is_instance_of::<PyFloat>() {
        OptionValue::Float(value.extract()?)
    } else if value.is_instance_of::<PyString>() {
        OptionValue::Str(value.extract()?)
    } else if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        OptionValue::List(value.try_iter()?.map(|item| option_value(&item?)).collect::<PyResult<_>>()?)
    } else if let Ok(dict) = value.cast::<PyDict>() {
        OptionValue::Map(dict.iter().map(|(k, v)| Ok((map_key(&k)?, option_value(&v)?))).collect::<PyResult<_>>()?)
    } else {
        OptionValue::Unsupported(type_name(value))
    })
}

/// A dict key as a map key: a str as it is, an int (e.g. a `logit_bias` token id) in decimal,
/// anything else spelled so that the core's message shows it (it is no key any option takes).
fn map_key(key: &Bound<'_, PyAny>) -> PyResult<String> {
    if key.is_instance_of::<PyString>() {
        return key.extract();
    }
    if key.is_instance_of::<PyInt>() && !key.is_instance_of::<PyBool>() {
        // Through i128, not `str()`: Python refuses to print an int of thousands of digits.
        return Ok(key.extract::<i128>().map_or_else(|_| "an integer past 128 bits".to_owned(), |n| n.to_string()));
    }
    Ok(format!("{} {}", type_name(key), key.repr()?))
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".to_owned())
}

/// Extracts a prompt or messages argument, or a `TypeError` naming it.
fn typed<'py, T>(value: &Bound<'py, PyAny>, param: &str, expected: &str) -> PyResult<T>
where
    T: for<'a> FromPyObject<'a, 'py>,
{
    value.extract::<T>().map_err(|_| type_error(param, expected, value))
}

pub(crate) fn type_error(param: &str, expected: &str, value: &Bound<'_, PyAny>) -> PyErr {
    let got = value.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".to_owned());
    PyTypeError::new_err(format!("`{param}` must be {expected}, got {got}"))
}
