//! Python arguments → core [`Request`]: the prompt forms and the sampling keyword arguments.
//!
//! Only conversion happens here; the ranges are checked by the core at submit so every front
//! door reports the same field names and messages. A wrong Python type is a `TypeError`
//! naming the field; an integer that cannot be represented (e.g. `max_tokens=-1`) is an
//! invalid request for that field.

use cortexstream::{ChatMessage, Error, Prompt, Request, SamplingParams};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyString};

use crate::errors::to_py_err;

/// A text or token-id prompt (`str | list[int]`).
pub fn raw_prompt(prompt: &Bound<'_, PyAny>) -> PyResult<Prompt> {
    if prompt.is_instance_of::<PyString>() {
        return Ok(Prompt::Text(prompt.extract()?));
    }
    prompt.extract::<Vec<u32>>().map(Prompt::Tokens).map_err(|_| type_error("prompt", "str or list[int]", prompt))
}

/// Chat messages: a list of dicts with string `role` and `content`.
pub fn chat_messages(messages: &Bound<'_, PyAny>) -> PyResult<Vec<ChatMessage>> {
    let items: Vec<Bound<'_, PyDict>> = typed(messages, "messages", "a list of dicts")?;
    items.iter().map(message).collect()
}

fn message(item: &Bound<'_, PyDict>) -> PyResult<ChatMessage> {
    let field = |key: &str| -> PyResult<String> {
        match item.get_item(key)? {
            Some(value) => typed(&value, "messages", &format!("a str `{key}` in every message")),
            None => Err(to_py_err(Error::invalid("messages", format!("every message needs a `{key}`")))),
        }
    };
    Ok(ChatMessage::new(field("role")?, field("content")?))
}

/// Builds the request from a prompt and the sampling keyword arguments. `None` for any of
/// them means its default, so callers can forward optional fields as they are.
pub fn request(prompt: Prompt, sampling: Option<&Bound<'_, PyDict>>) -> PyResult<Request> {
    let mut params = SamplingParams::default();
    let mut priority = 0;
    for (key, value) in sampling.into_iter().flat_map(|kwargs| kwargs.iter()) {
        let key: String = key.extract()?;
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
            "priority" => set(&mut priority, value, |v| number(v, "priority"))?,
            other => return Err(PyTypeError::new_err(format!("unexpected keyword argument `{other}`"))),
        }
    }
    Ok(Request::new(prompt, params).with_priority(priority))
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

/// A number field. A Python int outside the Rust type's range (a negative count, say) is an
/// invalid value for that field rather than a bare `OverflowError`.
fn number<'py, T>(value: &Bound<'py, PyAny>, param: &'static str) -> PyResult<T>
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

fn type_error(param: &str, expected: &str, value: &Bound<'_, PyAny>) -> PyErr {
    let got = value.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".to_owned());
    PyTypeError::new_err(format!("`{param}` must be {expected}, got {got}"))
}
