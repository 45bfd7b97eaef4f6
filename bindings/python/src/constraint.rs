//! Python values → core [`Constraint`]: `json_schema=` (dict, JSON str or Pydantic model
//! class), `regex=`, `grammar=`, `choices=` and OpenAI's `response_format=`. Only conversion
//! to JSON text happens here; the core parses, checks and compiles.

use cortexstream::{Constraint, Error};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::errors::to_py_err;
use crate::options::type_error;

const ONLY_ONE: &str = "only one of json_schema, regex, grammar, choices and response_format may be given";

/// Sets the request's constraint from keyword `field`, unless `value` is `None`; a second
/// constraint keyword is an invalid request naming the later one.
pub fn set(
    slot: &mut Option<Constraint>,
    field: &'static str,
    value: &Bound<'_, PyAny>,
    parse: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<Option<Constraint>>,
) -> PyResult<()> {
    if value.is_none() {
        return Ok(());
    }
    if slot.is_some() {
        return Err(to_py_err(Error::invalid(field, ONLY_ONE)));
    }
    *slot = parse(value)?;
    Ok(())
}

/// `json_schema=`: a dict, a JSON string, or a Pydantic model class (its `model_json_schema()`).
pub fn json_schema(value: &Bound<'_, PyAny>) -> PyResult<Option<Constraint>> {
    Ok(Some(Constraint::JsonSchema(schema_text(value, "json_schema")?)))
}

/// `response_format=`: OpenAI's dict, or a Pydantic model class as the `openai` client's
/// `parse()` takes it (same as `json_schema=`).
pub fn response_format(value: &Bound<'_, PyAny>) -> PyResult<Option<Constraint>> {
    if is_pydantic_model(value) {
        return json_schema(value);
    }
    let text = json_text(value, "response_format")?;
    let format: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| to_py_err(Error::invalid("response_format", format!("is not JSON: {e}"))))?;
    Constraint::from_response_format(&format).map_err(to_py_err)
}

pub fn regex(value: &Bound<'_, PyAny>) -> PyResult<Option<Constraint>> {
    Ok(Some(Constraint::Regex(string(value, "regex")?)))
}

pub fn grammar(value: &Bound<'_, PyAny>) -> PyResult<Option<Constraint>> {
    Ok(Some(Constraint::Grammar(string(value, "grammar")?)))
}

pub fn choices(value: &Bound<'_, PyAny>) -> PyResult<Option<Constraint>> {
    // A bare str is a sequence of one-letter choices in Python: refuse it rather than guess.
    if value.is_instance_of::<PyString>() {
        return Err(type_error("choices", "a list of str", value));
    }
    let choices = value.extract::<Vec<String>>().map_err(|_| type_error("choices", "a list of str", value))?;
    Ok(Some(Constraint::Choices(choices)))
}

fn string(value: &Bound<'_, PyAny>, field: &str) -> PyResult<String> {
    value.extract::<String>().map_err(|_| type_error(field, "a str", value))
}

/// A schema as JSON text: a str as it is, a dict through `json.dumps`, a Pydantic model class
/// through its `model_json_schema()`.
fn schema_text(value: &Bound<'_, PyAny>, field: &str) -> PyResult<String> {
    if value.is_instance_of::<PyString>() {
        return value.extract();
    }
    if is_pydantic_model(value) {
        return json_text(&value.call_method0("model_json_schema")?, field);
    }
    if value.is_instance_of::<PyDict>() {
        return json_text(value, field);
    }
    Err(type_error(field, "a dict, a JSON str or a Pydantic model class", value))
}

fn is_pydantic_model(value: &Bound<'_, PyAny>) -> bool {
    value.is_instance_of::<pyo3::types::PyType>() && value.hasattr("model_json_schema").unwrap_or(false)
}

fn json_text(value: &Bound<'_, PyAny>, field: &str) -> PyResult<String> {
    let json = value.py().import("json")?;
    json.call_method1("dumps", (value,))
        .and_then(|text| text.extract::<String>())
        .map_err(|_| type_error(field, "JSON-serialisable", value))
}
