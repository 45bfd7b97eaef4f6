//! Tool calling for Python: the tool fields of chat messages and the `ToolCall` record. The
//! `tools=`, `tool_choice=` and `parallel_tool_calls=` keyword arguments are request options
//! like the others (the core reads them in `RequestOptions::from_value`). Only conversion
//! happens here; the core checks the tools, renders them, constrains and parses the calls.

use cortexstream::Error;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::to_py_err;
use crate::options::type_error;

/// One call the model made; `arguments` is JSON text, as OpenAI returns it.
#[pyclass(frozen, get_all, module = "cortexstream._core")]
#[derive(Debug, Clone)]
pub struct ToolCall {
    id: String,
    name: String,
    arguments: String,
}

#[pymethods]
impl ToolCall {
    fn __repr__(&self) -> String {
        format!("ToolCall(id={:?}, name={:?}, arguments={:?})", self.id, self.name, self.arguments)
    }
}

impl From<cortexstream::ToolCall> for ToolCall {
    fn from(call: cortexstream::ToolCall) -> Self {
        Self { id: call.id, name: call.name, arguments: call.arguments }
    }
}

/// The tool fields of a chat message dict: `tool_calls` (a list of dicts, kept as given),
/// `tool_call_id` and `name` (str).
pub fn message_fields(item: &Bound<'_, PyDict>, message: &mut cortexstream::ChatMessage) -> PyResult<()> {
    if let Some(calls) = item.get_item("tool_calls")?.filter(|v| !v.is_none()) {
        let calls = json_value(&calls, "messages")?;
        let serde_json::Value::Array(calls) = calls else {
            return Err(to_py_err(Error::invalid("messages", "a message's `tool_calls` must be a list")));
        };
        message.tool_calls = Some(calls);
    }
    for (key, slot) in [("tool_call_id", &mut message.tool_call_id), ("name", &mut message.name)] {
        if let Some(value) = item.get_item(key)?.filter(|v| !v.is_none()) {
            *slot = Some(value.extract().map_err(|_| type_error("messages", &format!("a str `{key}`"), &value))?);
        }
    }
    Ok(())
}

/// A Python value as JSON, through `json.dumps` (dicts, lists, str, numbers, bools, None).
fn json_value(value: &Bound<'_, PyAny>, field: &str) -> PyResult<serde_json::Value> {
    let text: String = value
        .py()
        .import("json")?
        .call_method1("dumps", (value,))
        .and_then(|text| text.extract())
        .map_err(|_| type_error(field, "JSON-serialisable", value))?;
    serde_json::from_str(&text).map_err(|e| to_py_err(Error::invalid("tools", format!("{field} is not JSON: {e}"))))
}
