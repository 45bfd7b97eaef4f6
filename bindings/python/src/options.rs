//! Python arguments → core [`Request`]: the prompt forms and the sampling keyword arguments.
//!
//! Only conversion happens here; the ranges are checked by the core at submit so every front
//! door reports the same field names and messages. A wrong Python type is a `TypeError`
//! naming the field; an integer that cannot be represented (e.g. `max_tokens=-1`) is an
//! invalid request for that field.

use cortexstream::{ChatMessage, Error, Prompt, Request, SamplingParams};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyInt, PyString};

use crate::constraint;
use crate::errors::to_py_err;
use crate::tools::{message_fields, ToolArgs};

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

/// Builds the request from a prompt and the sampling keyword arguments. `None` for any of
/// them means its default, so callers can forward optional fields as they are.
pub fn request(prompt: Prompt, sampling: Option<&Bound<'_, PyDict>>) -> PyResult<Request> {
    let mut params = SamplingParams::default();
    let mut priority = 0;
    let mut tools = ToolArgs::default();
    for (key, value) in sampling.into_iter().flat_map(|kwargs| kwargs.iter()) {
        let key: String = key.extract()?;
        if tools.take(&key, &value)? {
            continue;
        }
        let p = &mut params;
        let value = &value;
        match key.as_str() {
            "temperature" => set(&mut p.temperature, value, |v| number(v, "temperature"))?,
            "top_k" => set(&mut p.top_k, value, |v| number(v, "top_k"))?,
            "top_p" => set(&mut p.top_p, value, |v| number(v, "top_p"))?,
            "min_p" => set(&mut p.min_p, value, |v| number(v, "min_p"))?,
            "repetition_penalty" => set(&mut p.repetition_penalty, value, |v| number(v, "repetition_penalty"))?,
            "presence_penalty" => set(&mut p.presence_penalty, value, |v| number(v, "presence_penalty"))?,
            "frequency_penalty" => set(&mut p.frequency_penalty, value, |v| number(v, "frequency_penalty"))?,
            "penalty_last_n" => set(&mut p.penalty_last_n, value, |v| number(v, "penalty_last_n"))?,
            "seed" => set(&mut p.seed, value, |v| number(v, "seed").map(Some))?,
            "max_tokens" => set(&mut p.max_tokens, value, |v| number(v, "max_tokens").map(Some))?,
            "logprobs" => set(&mut p.logprobs, value, |v| number(v, "logprobs").map(Some))?,
            "ignore_eos" => set(&mut p.ignore_eos, value, |v| typed(v, "ignore_eos", "a bool"))?,
            "stop" => set(&mut p.stop, value, stop_strings)?,
            "stop_token_ids" => set(&mut p.stop_token_ids, value, |v| typed(v, "stop_token_ids", "a list of int"))?,
            "logit_bias" => set(&mut p.logit_bias, value, logit_bias)?,
            "priority" => set(&mut priority, value, |v| number(v, "priority"))?,
            "json_schema" => constraint::set(&mut p.constraint, "json_schema", value, constraint::json_schema)?,
            "regex" => constraint::set(&mut p.constraint, "regex", value, constraint::regex)?,
            "grammar" => constraint::set(&mut p.constraint, "grammar", value, constraint::grammar)?,
            "choices" => constraint::set(&mut p.constraint, "choices", value, constraint::choices)?,
            "response_format" => {
                constraint::set(&mut p.constraint, "response_format", value, constraint::response_format)?
            }
            other => return Err(PyTypeError::new_err(format!("unexpected keyword argument `{other}`"))),
        }
    }
    tools.attach(Request::new(prompt, params).with_priority(priority))
}

/// Parses `value` into `slot` unless it is `None` (keep the default).
fn set<'py, T>(
    slot: &mut T,
    value: &Bound<'py, PyAny>,
    parse: impl FnOnce(&Bound<'py, PyAny>) -> PyResult<T>,
) -> PyResult<()> {
    if !value.is_none() {
        *slot = parse(value)?;
    }
    Ok(())
}

/// Extracts a non-number field, or a `TypeError` naming it.
fn typed<'py, T>(value: &Bound<'py, PyAny>, param: &str, expected: &str) -> PyResult<T>
where
    T: for<'a> FromPyObject<'a, 'py>,
{
    value.extract::<T>().map_err(|_| type_error(param, expected, value))
}

/// `stop="x"` or `stop=["x", "y"]`.
fn stop_strings(value: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if let Ok(single) = value.extract::<String>() {
        return Ok(vec![single]);
    }
    typed(value, "stop", "a str or a list of str")
}

/// OpenAI's `logit_bias`: `{token_id: bias}`. Ids may be ints or decimal strs (JSON object keys
/// are strings, so a dict decoded from an OpenAI request has str keys). The core checks that
/// ids are in the vocabulary and biases in [-100, 100].
fn logit_bias(value: &Bound<'_, PyAny>) -> PyResult<Vec<(u32, f32)>> {
    const EXPECTED: &str = "a dict of token id (int or str) to bias (float)";
    let entries = value.cast::<PyDict>().map_err(|_| type_error("logit_bias", EXPECTED, value))?;
    entries
        .iter()
        .map(|(key, bias)| {
            let bias = bias.extract::<f32>().map_err(|_| type_error("logit_bias", EXPECTED, &bias))?;
            Ok((bias_token_id(&key)?, bias))
        })
        .collect()
}

/// A `logit_bias` key as a token id. Integers that are no token id at all (negative, huge,
/// `"abc"`) are invalid values of the field, like ids past the vocabulary.
fn bias_token_id(key: &Bound<'_, PyAny>) -> PyResult<u32> {
    const EXPECTED: &str = "a dict of token id (int or str) to bias (float)";
    let text = if key.is_instance_of::<PyString>() {
        key.extract::<String>()?
    } else if key.is_instance_of::<PyInt>() && !key.is_instance_of::<PyBool>() {
        key.str()?.to_string()
    } else {
        return Err(type_error("logit_bias", EXPECTED, key));
    };
    text.trim().parse::<u32>().map_err(|_| {
        to_py_err(Error::invalid("logit_bias", format!("{text:?} is not a token id (a non-negative integer)")))
    })
}

/// A number field. A Python int outside the Rust type's range (a negative count, say) is an
/// invalid value for that field rather than a bare `OverflowError`.
pub fn number<'py, T>(value: &Bound<'py, PyAny>, param: &'static str) -> PyResult<T>
where
    T: for<'a> FromPyObject<'a, 'py>,
{
    value.extract::<T>().map_err(|_| {
        if value.is_instance_of::<PyInt>() {
            to_py_err(Error::invalid(param, format!("{value} is out of range")))
        } else {
            type_error(param, "a number", value)
        }
    })
}

pub(crate) fn type_error(param: &str, expected: &str, value: &Bound<'_, PyAny>) -> PyErr {
    let got = value.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".to_owned());
    PyTypeError::new_err(format!("`{param}` must be {expected}, got {got}"))
}
