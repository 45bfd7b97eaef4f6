//! Tool calling: the tools a chat request offers, how the model's chat template writes a call
//! ([`ToolCallFormat`]), the grammar that forces a call when `tool_choice` demands one, and
//! the parsers that turn the model's text back into [`ToolCall`]s (whole, or while streaming).
//!
//! Every front door goes through here: the request's `tools`, `tool_choice` and
//! `parallel_tool_calls` are options like any other, read by
//! [`crate::RequestOptions::from_value`], which builds the [`ToolSpec`] ([`ToolSpec::from_json`]
//! checks them and names the field at fault) and attaches it ([`crate::Request::with_tools`]);
//! and parses the output with [`parse_tool_calls`] or a [`ToolCallStream`].

mod format;
mod parse;
mod prompt;

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::options::OptionValue;
use crate::request::ChatMessage;

pub use format::ToolCallFormat;
pub use parse::{
    finish_reason, parse_tool_calls, ParsedOutput, StreamItem, ToolCallSplitter, ToolCallStream,
    TOOL_CALLS_FINISH_REASON,
};
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

/// The `tools` and `tool_choice` options as the core's [`OptionValue`]s, from `tools` as JSON
/// text and `tool_choice` as a bare word (`none`, `auto`, `required`) or JSON text (a named
/// function), as the C front door takes them; `None` is an unset option. The values then go
/// through [`crate::RequestOptions::from_value`] with the request's other options.
pub fn text_options(tools: Option<&str>, tool_choice: Option<&str>) -> Result<[(&'static str, OptionValue); 2]> {
    let tools = tools
        .map(serde_json::from_str::<OptionValue>)
        .transpose()
        .map_err(|e| Error::invalid("tools", format!("is not valid JSON: {e}")))?;
    let choice = tool_choice
        .map(|text| match text {
            "none" | "auto" | "required" => Ok(OptionValue::Str(text.to_string())),
            json => serde_json::from_str(json)
                .map_err(|e| Error::invalid("tool_choice", format!("is not none, auto, required or JSON text: {e}"))),
        })
        .transpose()?;
    Ok([("tools", tools.unwrap_or(OptionValue::Null)), ("tool_choice", choice.unwrap_or(OptionValue::Null))])
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

    /// The spec of a front door's optional tool arguments: `None` without `tools`, where a
    /// `tool_choice` other than "none" is an error naming `tool_choice`.
    pub fn from_options(
        tools: Option<&Value>,
        tool_choice: Option<&Value>,
        parallel_tool_calls: Option<bool>,
    ) -> Result<Option<Self>> {
        match (tools, tool_choice) {
            (Some(tools), choice) => Self::from_json(tools, choice, parallel_tool_calls).map(Some),
            (None, Some(choice)) if choice != "none" => {
                Err(Error::invalid("tool_choice", "is only allowed when `tools` are given"))
            }
            (None, _) => Ok(None),
        }
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
        Value::Object(object) => {
            object.get("function").and_then(|f| f.get("name")).and_then(Value::as_str).ok_or_else(|| {
                invalid("a named choice is {\"type\": \"function\", \"function\": {\"name\": ...}}".into())
            })?
        }
        _ => return Err(invalid("must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", ...}".into())),
    };
    if tools.iter().any(|t| t.name == name) {
        Ok(ToolChoice::Function(name.to_string()))
    } else {
        Err(invalid(format!("names the function `{name}`, which is not in `tools`")))
    }
}

/// Chat messages from JSON text in OpenAI's shape: `[{"role", "content", "tool_calls"?,
/// "tool_call_id"?, "name"?}]`, `content` null (or absent) allowed on an assistant turn with
/// `tool_calls`, as front doors that take a conversation as JSON (C) receive it. Errors name
/// `messages` with the index of the message at fault.
pub fn messages_from_json(text: &str) -> Result<Vec<ChatMessage>> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| Error::invalid("messages", format!("is not valid JSON: {e}")))?;
    let items = value.as_array().ok_or_else(|| Error::invalid("messages", "must be a JSON array of messages"))?;
    items.iter().enumerate().map(|(index, item)| message_from_json(index, item)).collect()
}

fn message_from_json(index: usize, item: &Value) -> Result<ChatMessage> {
    let at = |message: &str| Error::invalid("messages", format!("messages[{index}]{message}"));
    let object = item.as_object().ok_or_else(|| at(" must be an object"))?;
    let text = |key: &str| -> Result<Option<String>> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(at(&format!(".{key} must be a string"))),
        }
    };
    let role = text("role")?.ok_or_else(|| at(".role is required"))?;
    let tool_calls = match object.get("tool_calls") {
        None | Some(Value::Null) => None,
        Some(Value::Array(calls)) => Some(calls.clone()),
        Some(_) => return Err(at(".tool_calls must be an array")),
    };
    let content = match text("content")? {
        Some(content) => content,
        None if tool_calls.is_some() => String::new(),
        None => return Err(at(".content is required (null only beside tool_calls)")),
    };
    let mut message = ChatMessage::new(role, content);
    message.tool_calls = tool_calls;
    message.tool_call_id = text("tool_call_id")?;
    message.name = text("name")?;
    Ok(message)
}

/// The syntax to parse a request's answer for calls in, given the model's: `None` unless
/// the request offers tools (and `tool_choice` is not none).
pub fn parsed_format(request: &crate::request::Request, model_format: ToolCallFormat) -> Option<ToolCallFormat> {
    request.tools.as_ref().filter(|spec| spec.choice != ToolChoice::None).map(|_| model_format)
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

/// The constraint a request runs under, given its tools: its own constraint `own`, or, when
/// `tool_choice` demands a call, the call grammar for the model's `format`.
///
/// Whenever tools are offered (choice other than none) the call grammar is compiled through
/// `compile`, even if it is not applied, so an argument schema llguidance cannot compile is a
/// 400 on `tools` at submit. A forced call together with another constraint is refused
/// (the answer cannot be both). Tools on a prompt that is not chat messages are refused.
pub(crate) fn effective_constraint(
    own: Option<crate::constraint::Constraint>,
    tools: Option<&ToolSpec>,
    prompt: &crate::request::Prompt,
    format: ToolCallFormat,
    special_token: &dyn Fn(&str) -> Option<u32>,
    compile: &dyn Fn(&crate::constraint::Constraint) -> Result<()>,
) -> Result<Option<crate::constraint::Constraint>> {
    let Some(spec) = tools.filter(|spec| spec.choice != ToolChoice::None) else { return Ok(own) };
    if !matches!(prompt, crate::request::Prompt::Chat(_)) {
        return Err(Error::invalid("tools", "tools need a chat prompt (messages)"));
    }
    let calls = call_constraint(format, spec, special_token);
    compile(&calls).map_err(|e| match e {
        Error::InvalidRequest { message, .. } => {
            Error::invalid("tools", format!("a tool's `parameters` schema does not compile: {message}"))
        }
        other => other,
    })?;
    match (spec.forces_call(), own) {
        (false, own) => Ok(own),
        (true, None) => Ok(Some(calls)),
        (true, Some(other)) => Err(Error::invalid(
            "tool_choice",
            format!("a required tool call cannot be combined with a `{}` constraint", other.field()),
        )),
    }
}

/// Calls as a JSON array `[{"id", "name", "arguments"}]` (arguments as JSON text), for front
/// doors that hand them out as text (C).
pub fn calls_to_json(calls: &[ToolCall]) -> String {
    serde_json::to_string(calls).unwrap_or_else(|_| "[]".to_string())
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
