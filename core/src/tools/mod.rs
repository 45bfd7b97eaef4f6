//! Tool calling: the tools a chat request offers, how the model's chat template writes a call
//! ([`ToolCallFormat`]), the grammar that forces a call when `tool_choice` demands one, and
//! the parsers that turn the model's text back into [`ToolCall`]s (whole, or while streaming).
//!
//! Every front door goes through here: it builds a [`ToolSpec`] from the request's `tools`,
//! `tool_choice` and `parallel_tool_calls` ([`ToolSpec::from_json`] checks them and names
//! the field at fault), submits it with the chat messages ([`crate::Request::with_tools`]),
//! and parses the output with [`parse_tool_calls`] or a [`ToolCallStream`].

mod format;
mod parse;
mod prompt;

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::request::ChatMessage;

pub use format::ToolCallFormat;
pub use parse::{parse_tool_calls, ParsedOutput, StreamItem, ToolCallStream};
pub use prompt::{call_constraint, prepare_chat};

/// One function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    /// The JSON schema of the arguments (an object schema; `{"type": "object",
    /// "properties": {}}` when the request gave none).
    pub parameters: Value,
    /// The tool as the request gave it (`{"type": "function", "function": {..}}`): what the
    /// chat template receives, unchanged.
    pub definition: Value,
}

/// Whether and which tool the model must call (OpenAI's `tool_choice`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// No call: the tools are neither shown to the model nor parsed out of its answer.
    None,
    /// The model decides; its output is parsed for calls.
    Auto,
    /// At least one call (exactly one without parallel calls), constrained to the tools.
    Required,
    /// A call of this function, constrained to its argument schema.
    Function(String),
}

/// The tools a request offers and how they may be used.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    /// More than one call per answer (OpenAI's `parallel_tool_calls`, default true).
    pub parallel_calls: bool,
}

/// A call the model made: `arguments` is JSON text (an object), as OpenAI returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// What a function name may contain: OpenAI's rule, plus `.` which Ollama tools use.
fn valid_function_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl ToolSpec {
    /// Builds and checks a spec from the request's JSON: `tools` (OpenAI's list of
    /// `{"type": "function", "function": {"name", "description"?, "parameters"?}}`),
    /// `tool_choice` (`"none"`, `"auto"`, `"required"` or `{"type": "function", "function":
    /// {"name"}}`; default auto) and `parallel_tool_calls` (default true). Errors are
    /// [`Error::InvalidRequest`] on `tools` or `tool_choice`, the message giving the path
    /// (`tools[1].function.name`). Argument schemas are compiled at submit.
    pub fn from_json(tools: &Value, tool_choice: Option<&Value>, parallel_tool_calls: Option<bool>) -> Result<Self> {
        let items = tools.as_array().ok_or_else(|| Error::invalid("tools", "tools must be a list of tools"))?;
        if items.is_empty() {
            return Err(Error::invalid("tools", "tools must not be empty (leave it out to offer no tools)"));
        }
        let tools = items.iter().enumerate().map(|(i, item)| tool(i, item)).collect::<Result<Vec<_>>>()?;
        let mut seen = HashSet::new();
        if let Some(duplicate) = tools.iter().find(|t| !seen.insert(t.name.as_str())) {
            return Err(Error::invalid("tools", format!("two tools are named `{}`", duplicate.name)));
        }
        let choice = tool_choice.map_or(Ok(ToolChoice::Auto), |c| choice(c, &tools))?;
        Ok(Self { tools, choice, parallel_calls: parallel_tool_calls.unwrap_or(true) })
    }

    /// The tools' definitions as the chat template receives them.
    pub fn definitions(&self) -> Vec<Value> {
        self.tools.iter().map(|t| t.definition.clone()).collect()
    }

    /// The tools a call may name under this choice (all, or the named one).
    pub(crate) fn callable(&self) -> Vec<&Tool> {
        match &self.choice {
            ToolChoice::Function(name) => self.tools.iter().filter(|t| &t.name == name).collect(),
            _ => self.tools.iter().collect(),
        }
    }

    /// Whether the answer must be a call (and so is constrained to one).
    pub fn forces_call(&self) -> bool {
        matches!(self.choice, ToolChoice::Required | ToolChoice::Function(_))
    }
}

fn tool(index: usize, item: &Value) -> Result<Tool> {
    let at = |path: &str, message: &str| Error::invalid("tools", format!("tools[{index}]{path}: {message}"));
    let object = item.as_object().ok_or_else(|| at("", "must be an object"))?;
    match object.get("type").map(|t| t.as_str()) {
        None | Some(Some("function")) => {}
        _ => return Err(at(".type", "must be \"function\" (the only tool type)")),
    }
    let function = object
        .get("function")
        .ok_or_else(|| at(".function", "is required"))?
        .as_object()
        .ok_or_else(|| at(".function", "must be an object"))?;
    let name = match function.get("name") {
        None | Some(Value::Null) => return Err(at(".function.name", "is required")),
        Some(Value::String(name)) if valid_function_name(name) => name.clone(),
        Some(Value::String(name)) => {
            return Err(at(
                ".function.name",
                &format!("{name:?} must be 1 to 64 characters from a-z, A-Z, 0-9, `_`, `-`, `.`"),
            ))
        }
        Some(_) => return Err(at(".function.name", "must be a string")),
    };
    if function.get("description").is_some_and(|d| !d.is_string() && !d.is_null()) {
        return Err(at(".function.description", "must be a string"));
    }
    let parameters = match function.get("parameters") {
        None | Some(Value::Null) => serde_json::json!({ "type": "object", "properties": {} }),
        Some(schema @ Value::Object(_)) => schema.clone(),
        Some(_) => return Err(at(".function.parameters", "must be a JSON schema object")),
    };
    if parameters.get("type").is_some_and(|t| t != "object") {
        return Err(at(".function.parameters", "must describe an object (`\"type\": \"object\"`)"));
    }
    Ok(Tool { name, parameters, definition: item.clone() })
}

fn choice(value: &Value, tools: &[Tool]) -> Result<ToolChoice> {
    let invalid = |message: String| Error::invalid("tool_choice", message);
    let name = match value {
        Value::String(s) if s == "none" => return Ok(ToolChoice::None),
        Value::String(s) if s == "auto" => return Ok(ToolChoice::Auto),
        Value::String(s) if s == "required" => return Ok(ToolChoice::Required),
        Value::String(other) => {
            return Err(invalid(format!("{other:?} is not one of \"none\", \"auto\", \"required\" or a function")))
        }
        Value::Object(object) => object
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("a named choice is {\"type\": \"function\", \"function\": {\"name\": ...}}".into()))?,
        _ => return Err(invalid("must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", ...}".into())),
    };
    if tools.iter().any(|t| t.name == name) {
        Ok(ToolChoice::Function(name.to_string()))
    } else {
        Err(invalid(format!("names the function `{name}`, which is not in `tools`")))
    }
}

/// Checks the tool-calling fields of a conversation: a `tool` message needs `tool_call_id`,
/// and each entry of an assistant's `tool_calls` needs `function.name`. Errors name
/// `messages` with the message index.
pub fn validate_messages(messages: &[ChatMessage]) -> Result<()> {
    for (index, message) in messages.iter().enumerate() {
        let at = |message: String| Error::invalid("messages", format!("messages[{index}]{message}"));
        if message.role == "tool" && message.tool_call_id.as_deref().is_none_or(str::is_empty) {
            return Err(at(".tool_call_id is required on a `tool` message".into()));
        }
        for (i, call) in message.tool_calls.iter().flatten().enumerate() {
            let named = call.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
            if named.is_none_or(str::is_empty) {
                return Err(at(format!(".tool_calls[{i}].function.name is required")));
            }
        }
    }
    Ok(())
}

/// A fresh call id: 9 letters and digits, the form Mistral's templates require (and OpenAI
/// clients accept any string).
pub fn new_call_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    // splitmix64 of clock and counter: distinct per call, not guessable in order.
    let mut x = nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (0..9)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests;
