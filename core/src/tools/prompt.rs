//! The prompt side of tool calling: rendering a conversation with its tools, and the grammar
//! that makes the answer a call.

use serde_json::{json, Value};

use super::{validate_messages, Tool, ToolCallFormat, ToolChoice, ToolSpec};
use crate::chat::ChatTemplate;
use crate::constraint::Constraint;
use crate::error::Result;
use crate::request::ChatMessage;

/// JSON as `json.dumps` spaces it, which is how the templates print calls in the history the
/// model learned from; and no free whitespace, which a small model could loop on.
const JSON_STYLE: &str = r#"{"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}"#;

/// The prompt text of a chat request offering `tools` (and the assistant header).
///
/// A template with a native tool syntax receives the tools as `tools` and the history's
/// `tool_calls` / `tool` messages as they are. A template without one ([`ToolCallFormat::Generic`])
/// gets the tools described in the system message, past calls written as the generic JSON the
/// model is asked to answer in, and tool results as user turns (so templates that insist on
/// alternating user/assistant turns still render). With `tool_choice` none the tools are not
/// shown at all.
pub fn prepare_chat(template: &ChatTemplate, messages: &[ChatMessage], tools: Option<&ToolSpec>) -> Result<String> {
    validate_messages(messages)?;
    let offered = tools.filter(|spec| spec.choice != ToolChoice::None);
    match template.tool_format() {
        ToolCallFormat::Generic => {
            let mut messages: Vec<ChatMessage> = messages.iter().map(generic_history_message).collect();
            if let Some(spec) = offered {
                describe_tools_in_system_message(&mut messages, spec);
            }
            template.render(&messages, true)
        }
        _ => {
            let definitions = offered.map(ToolSpec::definitions);
            let messages: Vec<ChatMessage> = messages.iter().map(with_argument_objects).collect();
            template.render_with_tools(&messages, definitions.as_deref(), true)
        }
    }
}

/// A history message whose calls' `arguments` are objects: OpenAI sends them as JSON text,
/// the templates print them with `tojson` and expect the object Hugging Face documents.
fn with_argument_objects(message: &ChatMessage) -> ChatMessage {
    let mut message = message.clone();
    for call in message.tool_calls.iter_mut().flatten() {
        if let Some(arguments) = call.get_mut("function").and_then(|f| f.get_mut("arguments")) {
            if let Some(object) = arguments.as_str().and_then(|text| serde_json::from_str::<Value>(text).ok()) {
                *arguments = object;
            }
        }
    }
    message
}

/// A history message as a template without tool support can show it.
fn generic_history_message(message: &ChatMessage) -> ChatMessage {
    if let Some(calls) = message.tool_calls.as_ref().filter(|calls| !calls.is_empty()) {
        let calls: Vec<Value> = calls.iter().map(generic_call).collect();
        let written = json!({ "tool_calls": calls }).to_string();
        let content = if message.content.is_empty() { written } else { format!("{}\n{written}", message.content) };
        return ChatMessage::new(message.role.clone(), content);
    }
    if message.role == "tool" {
        let mut response = serde_json::Map::new();
        if let Some(name) = &message.name {
            response.insert("name".into(), Value::String(name.clone()));
        }
        response.insert("content".into(), Value::String(message.content.clone()));
        return ChatMessage::new("user", json!({ "tool_response": response }).to_string());
    }
    ChatMessage::new(message.role.clone(), message.content.clone())
}

/// `{"name", "arguments"}` of a history call in Hugging Face's shape (arguments given as an
/// object, or as OpenAI's JSON text).
fn generic_call(call: &Value) -> Value {
    let function = call.get("function").unwrap_or(call);
    let arguments = match function.get("arguments") {
        Some(Value::String(text)) => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone())),
        Some(value) => value.clone(),
        None => json!({}),
    };
    json!({ "name": function.get("name").cloned().unwrap_or(Value::Null), "arguments": arguments })
}

/// Prepends (or adds to the first system message) the description of the tools and of the
/// answer that calls them.
fn describe_tools_in_system_message(messages: &mut Vec<ChatMessage>, spec: &ToolSpec) {
    let listing: Vec<String> = spec.tools.iter().map(|t| t.definition.to_string()).collect();
    let how = if spec.parallel_calls { "one or more of these tools" } else { "one of these tools" };
    let prompt = format!(
        "You can call {how}. To call them, answer with only a JSON object of the form \
         {{\"tool_calls\": [{{\"name\": \"<tool name>\", \"arguments\": {{<arguments>}}}}]}}. \
         Otherwise answer normally.\n\nTools:\n{}",
        listing.join("\n")
    );
    match messages.first_mut() {
        Some(first) if first.role == "system" => first.content = format!("{}\n\n{prompt}", first.content),
        _ => messages.insert(0, ChatMessage::new("system", prompt)),
    }
}

/// The constraint that makes the answer a call in `format`: one call (or, with parallel calls
/// and `tool_choice` required, one or more) of the callable tools, each call's arguments valid
/// against its schema. A named function is called once, as vLLM does.
/// `special_token` gives the id of a marker (`<tool_call>`, `[TOOL_CALLS]`) when the
/// vocabulary has it as a special token, which the grammar must then name by id.
pub fn call_constraint(
    format: ToolCallFormat,
    spec: &ToolSpec,
    special_token: &dyn Fn(&str) -> Option<u32>,
) -> Constraint {
    let marker = |text: &str| match special_token(text) {
        Some(id) => format!("<[{id}]>"),
        None => lark_string(text),
    };
    let tools = spec.callable();
    let several = spec.parallel_calls && spec.choice == ToolChoice::Required;
    let repeat = |call: &str, separator: &str| {
        if several {
            format!("{call} ({} {call})*", lark_string(separator))
        } else {
            call.to_string()
        }
    };
    let lark = match format {
        ToolCallFormat::Hermes => {
            let schema = style(call_schema(format, &tools, ""));
            format!(
                "start: {}\ncall: {} {} %json{schema} {} {}\n",
                repeat("call", "\n"),
                marker("<tool_call>"),
                lark_string("\n"),
                lark_string("\n"),
                marker("</tool_call>")
            )
        }
        ToolCallFormat::Llama3 => {
            let schema = style(call_schema(format, &tools, ""));
            format!("start: {}\ncall: %json{schema}\n", repeat("call", "; "))
        }
        ToolCallFormat::Mistral => {
            let schema = style(call_schema(format, &tools, ""));
            format!("start: {} \"[\" {} \"]\"\ncall: %json{schema}\n", marker("[TOOL_CALLS]"), repeat("call", ", "))
        }
        ToolCallFormat::MistralArgs => {
            let alternatives: Vec<String> = tools
                .iter()
                .map(|tool| {
                    format!(
                        "{} {} {} %json{}",
                        marker("[TOOL_CALLS]"),
                        lark_string(&tool.name),
                        marker("[ARGS]"),
                        style(tool.parameters.clone())
                    )
                })
                .collect();
            let calls = if several { "call+" } else { "call" };
            format!("start: {calls}\ncall: {}\n", alternatives.join(" | "))
        }
        ToolCallFormat::Generic => {
            let prefix = "/properties/tool_calls/items";
            let mut calls = json!({ "type": "array", "items": call_schema(format, &tools, prefix), "minItems": 1 });
            if !several {
                calls["maxItems"] = json!(1);
            }
            let schema = style(json!({
                "type": "object",
                "properties": { "tool_calls": calls },
                "required": ["tool_calls"],
                "additionalProperties": false,
            }));
            format!("start: %json{schema}\n")
        }
    };
    Constraint::Grammar(lark)
}

/// The schema of one call object `{"name": <const>, "<arguments key>": <tool's schema>}`, an
/// `anyOf` over the tools when there are several. `at` is where this schema sits in the
/// grammar's JSON document: local `$ref`s of the tools' schemas are rewritten to point there.
fn call_schema(format: ToolCallFormat, tools: &[&Tool], at: &str) -> Value {
    let key = format.arguments_key();
    let one = |tool: &Tool, path: String| {
        let mut parameters = tool.parameters.clone();
        rebase_refs(&mut parameters, &format!("{path}/properties/{key}"));
        let mut properties = serde_json::Map::new();
        properties.insert("name".into(), json!({ "const": tool.name }));
        properties.insert(key.into(), parameters);
        json!({ "type": "object", "properties": properties, "required": ["name", key], "additionalProperties": false })
    };
    match tools {
        [tool] => one(tool, at.to_string()),
        _ => {
            json!({ "anyOf": tools.iter().enumerate().map(|(i, t)| one(t, format!("{at}/anyOf/{i}"))).collect::<Vec<_>>() })
        }
    }
}

/// Points a tool schema's local references (`#/$defs/x`, `#`) at the place `path` where the
/// schema now sits inside a larger document.
pub(super) fn rebase_refs(schema: &mut Value, path: &str) {
    match schema {
        Value::Object(object) => {
            for (key, value) in object.iter_mut() {
                match value {
                    Value::String(reference) if key == "$ref" && reference.starts_with('#') => {
                        *reference = format!("#{path}{}", &reference[1..]);
                    }
                    other => rebase_refs(other, path),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| rebase_refs(item, path)),
        _ => {}
    }
}

/// `schema` with llguidance's JSON layout options.
fn style(mut schema: Value) -> Value {
    let options: Value = serde_json::from_str(JSON_STYLE).unwrap_or_default();
    if let Some(object) = schema.as_object_mut() {
        object.insert("x-guidance".into(), options);
    }
    schema
}

/// A Lark string literal (JSON escaping is a subset Lark reads the same way).
fn lark_string(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}
