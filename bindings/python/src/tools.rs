//! Tool calling for Python: `tools=`, `tool_choice=`, `parallel_tool_calls=` keyword
//! arguments, the tool fields of chat messages, and the `ToolCall` record. Only conversion
//! happens here; the core checks the tools, renders them, constrains and parses the calls.

use cortexstream::tools::ToolSpec;
use cortexstream::{Error, Request};
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

/// The tool keyword arguments of one request, gathered while the others are read.
#[derive(Default)]
pub struct ToolArgs {
    tools: Option<serde_json::Value>,
    choice: Option<serde_json::Value>,
    parallel: Option<bool>,
}

impl ToolArgs {
    /// Takes `key` if it is one of the tool arguments; `Ok(false)` leaves it to the caller.
    pub fn take(&mut self, key: &str, value: &Bound<'_, PyAny>) -> PyResult<bool> {
        if value.is_none() {
            return Ok(matches!(key, "tools" | "tool_choice" | "parallel_tool_calls"));
        }
        match key {
            "tools" => self.tools = Some(json_value(value, "tools")?),
            "tool_choice" => self.choice = Some(json_value(value, "tool_choice")?),
            "parallel_tool_calls" => {
                self.parallel = Some(value.extract().map_err(|_| type_error("parallel_tool_calls", "a bool", value))?)
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Adds the checked tools to `request`.
    pub fn attach(self, request: Request) -> PyResult<Request> {
        let spec =
            ToolSpec::from_options(self.tools.as_ref(), self.choice.as_ref(), self.parallel).map_err(to_py_err)?;
        Ok(match spec {
            Some(spec) => request.with_tools(spec),
            None => request,
        })
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
