use serde_json::{json, Value};

use super::*;
use crate::chat::ChatTemplate;
use crate::constraint::Constraint;

fn weather() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Weather.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
}

fn spec(choice: Option<Value>, parallel: Option<bool>) -> ToolSpec {
    ToolSpec::from_json(&json!([weather()]), choice.as_ref(), parallel).expect("valid tools")
}

fn invalid(tools: Value, choice: Option<Value>) -> (String, String) {
    match ToolSpec::from_json(&tools, choice.as_ref(), None) {
        Err(Error::InvalidRequest { param, message }) => (param.to_string(), message),
        other => panic!("expected an invalid request, got {other:?}"),
    }
}

#[test]
fn malformed_tools_are_refused_naming_the_field() {
    let (param, message) = invalid(json!([{"type": "function", "function": {"description": "x"}}]), None);
    assert_eq!((param.as_str(), message.as_str()), ("tools", "tools[0].function.name: is required"));
    let (param, message) =
        invalid(json!([weather(), {"type": "function", "function": {"name": "f", "parameters": []}}]), None);
    assert_eq!(param, "tools");
    assert!(message.starts_with("tools[1].function.parameters:"), "{message}");
    let (_, message) =
        invalid(json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]), None);
    assert!(message.contains("must describe an object"), "{message}");
    let (_, message) = invalid(json!([{"type": "retrieval"}]), None);
    assert!(message.starts_with("tools[0].type"), "{message}");
    let (_, message) = invalid(json!([{"type": "function", "function": {"name": "has space"}}]), None);
    assert!(message.starts_with("tools[0].function.name"), "{message}");
    let (_, message) = invalid(json!([weather(), weather()]), None);
    assert!(message.contains("two tools are named `get_weather`"), "{message}");
    let (param, _) = invalid(json!({"name": "f"}), None);
    assert_eq!(param, "tools");
    let (param, _) = invalid(json!([]), None);
    assert_eq!(param, "tools");
}

#[test]
fn tool_choice_is_checked_against_the_tools() {
    let (param, message) =
        invalid(json!([weather()]), Some(json!({"type": "function", "function": {"name": "get_time"}})));
    assert_eq!(param, "tool_choice");
    assert!(message.contains("`get_time`"), "{message}");
    let (param, _) = invalid(json!([weather()]), Some(json!("sometimes")));
    assert_eq!(param, "tool_choice");
    assert_eq!(spec(None, None).choice, ToolChoice::Auto);
    assert_eq!(spec(Some(json!("none")), None).choice, ToolChoice::None);
    assert_eq!(spec(Some(json!("required")), None).choice, ToolChoice::Required);
    let named = spec(Some(json!({"type": "function", "function": {"name": "get_weather"}})), Some(false));
    assert_eq!((named.choice, named.parallel_calls), (ToolChoice::Function("get_weather".into()), false));
}

#[test]
fn a_tool_message_needs_its_call_id() {
    let messages = [ChatMessage::new("user", "hi"), ChatMessage::new("tool", "22 degrees")];
    match validate_messages(&messages) {
        Err(Error::InvalidRequest { param: "messages", message }) => {
            assert_eq!(message, "messages[1].tool_call_id is required on a `tool` message")
        }
        other => panic!("{other:?}"),
    }
    let nameless = ChatMessage::new("assistant", "").with_tool_calls(vec![json!({"function": {"arguments": {}}})]);
    let err = validate_messages(&[nameless]).unwrap_err();
    assert!(err.to_string().contains("messages[0].tool_calls[0].function.name"), "{err}");
    assert!(validate_messages(&[ChatMessage::tool_result("ok", "abc", None)]).is_ok());
}

fn calls(parsed: &ParsedOutput) -> Vec<(String, Value)> {
    parsed.tool_calls.iter().map(|c| (c.name.clone(), serde_json::from_str(&c.arguments).unwrap())).collect()
}

#[test]
fn each_format_parses_its_calls_and_keeps_other_text() {
    let hermes = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
    let parsed = parse_tool_calls(ToolCallFormat::Hermes, hermes);
    assert_eq!(calls(&parsed), [("get_weather".into(), json!({"city": "Paris"})), ("get_time".into(), json!({}))]);
    assert_eq!(parsed.content, "Let me check.");

    let llama = "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}; {\"name\": \"f\", \"parameters\": {}}";
    let parsed = parse_tool_calls(ToolCallFormat::Llama3, llama);
    assert_eq!(calls(&parsed), [("get_weather".into(), json!({"city": "Rome"})), ("f".into(), json!({}))]);

    let mistral =
        "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}, \"id\": \"abcdefghi\"}]";
    assert_eq!(
        calls(&parse_tool_calls(ToolCallFormat::Mistral, mistral)),
        [("get_weather".into(), json!({"city": "Oslo"}))]
    );
    // The marker is a control token that decoding does not print.
    assert_eq!(calls(&parse_tool_calls(ToolCallFormat::Mistral, &mistral[12..])).len(), 1);

    let args = "[TOOL_CALLS]get_weather[CALL_ID]abcdefghi[ARGS]{\"city\": \"Oslo\"}[TOOL_CALLS]f[ARGS]{}";
    assert_eq!(
        calls(&parse_tool_calls(ToolCallFormat::MistralArgs, args)),
        [("get_weather".into(), json!({"city": "Oslo"})), ("f".into(), json!({}))]
    );
    // Its markers are control tokens too: `name{..}` without them.
    assert_eq!(calls(&parse_tool_calls(ToolCallFormat::MistralArgs, "get_weather{\"city\": \"Oslo\"}")).len(), 1);

    let generic = "{\"tool_calls\": [{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Lima\\\"}\"}]}";
    assert_eq!(
        calls(&parse_tool_calls(ToolCallFormat::Generic, generic)),
        [("get_weather".into(), json!({"city": "Lima"}))]
    );

    // Not calls: kept as content, verbatim.
    for (format, text) in [
        (ToolCallFormat::Hermes, "<tool_call>\n{not json}\n</tool_call> after"),
        (ToolCallFormat::Llama3, "{\"answer\": 42}"),
        (ToolCallFormat::Llama3, "Plain text."),
        (ToolCallFormat::Mistral, "[1, 2]"),
        (ToolCallFormat::Generic, "{\"city\": \"Paris\"}"),
        (ToolCallFormat::MistralArgs, "Hello there {x}"),
        (ToolCallFormat::MistralArgs, "Sunny."),
        (ToolCallFormat::Generic, "{\"tool_calls\": [{\"name\": \"f\", \"arguments\": [1]}]}"),
    ] {
        let parsed = parse_tool_calls(format, text);
        assert_eq!((parsed.content.as_str(), parsed.tool_calls.len()), (text, 0), "{format:?}");
    }
}

/// Feeding the text in pieces of every size gives the same content and calls as parsing it
/// whole, and no call text ever leaks out as content.
#[test]
fn streaming_in_any_pieces_matches_parsing_whole() {
    let samples = [
        (ToolCallFormat::Hermes, "Sure.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>{\"name\": \"g\", \"arguments\": {}}</tool_call>"),
        (ToolCallFormat::Hermes, "No call here, only a < and <tool"),
        (ToolCallFormat::Hermes, "<tool_call>{\"name\": \"unclosed\", \"arguments\": {}}"),
        (ToolCallFormat::Llama3, "  {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}"),
        (ToolCallFormat::Llama3, "The answer is {42}."),
        (ToolCallFormat::Mistral, "[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}]"),
        (ToolCallFormat::Generic, "{\"tool_calls\": [{\"name\": \"a\", \"arguments\": {}}, {\"name\": \"b\", \"arguments\": {\"x\": 1}}]}"),
        (ToolCallFormat::Generic, "{\"answer\": \"not a call\"}"),
        (ToolCallFormat::MistralArgs, "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Oslo\"}[TOOL_CALLS]f[ARGS]{}"),
        (ToolCallFormat::MistralArgs, "get_time{\"hours\": 3}"),
        (ToolCallFormat::MistralArgs, "Plain words, then {braces}."),
    ];
    for (format, text) in samples {
        let whole = parse_tool_calls(format, text);
        for size in 1..=text.len() {
            let mut stream = ToolCallStream::new(format);
            let mut items = Vec::new();
            let mut rest = text;
            while !rest.is_empty() {
                let mut cut = size.min(rest.len());
                while !rest.is_char_boundary(cut) {
                    cut += 1;
                }
                items.extend(stream.push(&rest[..cut]));
                rest = &rest[cut..];
            }
            items.extend(stream.finish());
            let content: String = items
                .iter()
                .filter_map(|i| if let StreamItem::Content(t) = i { Some(t.as_str()) } else { None })
                .collect();
            let streamed: Vec<(usize, String, String)> = items
                .iter()
                .filter_map(|i| match i {
                    StreamItem::Call { index, call } => Some((*index, call.name.clone(), call.arguments.clone())),
                    _ => None,
                })
                .collect();
            let expected: Vec<(usize, String, String)> =
                whole.tool_calls.iter().enumerate().map(|(i, c)| (i, c.name.clone(), c.arguments.clone())).collect();
            assert_eq!(streamed, expected, "{format:?} {text:?} in pieces of {size}");
            if whole.tool_calls.is_empty() {
                assert_eq!(content, text, "{format:?} in pieces of {size}");
            } else {
                assert_eq!(content.trim(), whole.content, "{format:?} {text:?} in pieces of {size}");
            }
        }
    }
}

#[test]
fn call_grammars_name_the_tools_and_honour_parallel_calls() {
    let no_special = |_: &str| None;
    let Constraint::Grammar(one) =
        call_constraint(ToolCallFormat::Hermes, &spec(Some(json!("required")), Some(false)), &no_special)
    else {
        panic!("a grammar")
    };
    assert!(one.starts_with("start: call\n"), "{one}");
    assert!(one.contains("\"<tool_call>\"") && one.contains(r#""const":"get_weather""#), "{one}");
    let Constraint::Grammar(many) =
        call_constraint(ToolCallFormat::Hermes, &spec(Some(json!("required")), None), &|t: &str| {
            (t == "<tool_call>").then_some(7)
        })
    else {
        panic!("a grammar")
    };
    assert!(many.starts_with("start: call (\"\\n\" call)*"), "{many}");
    assert!(many.contains("<[7]>"), "a special-token marker is named by id: {many}");
    let Constraint::Grammar(generic) =
        call_constraint(ToolCallFormat::Generic, &spec(Some(json!("required")), Some(false)), &no_special)
    else {
        panic!("a grammar")
    };
    assert!(generic.contains(r#""maxItems":1"#) && generic.contains(r#""minItems":1"#), "{generic}");
    // A named function is called once, parallel calls or not.
    let named = spec(Some(json!({"type": "function", "function": {"name": "get_weather"}})), Some(true));
    let Constraint::Grammar(named) = call_constraint(ToolCallFormat::Llama3, &named, &no_special) else {
        panic!("a grammar")
    };
    assert!(named.starts_with("start: call\n"), "{named}");
}

#[test]
fn schema_references_are_rebased_to_where_the_schema_sits() {
    let mut schema = json!({"properties": {"a": {"$ref": "#/$defs/A"}}, "$defs": {"A": {"type": "string"}}});
    prompt_rebase(&mut schema, "/anyOf/1/properties/arguments");
    assert_eq!(schema["properties"]["a"]["$ref"], "#/anyOf/1/properties/arguments/$defs/A");
}

fn prompt_rebase(schema: &mut Value, path: &str) {
    super::prompt::rebase_refs(schema, path)
}

/// ChatML (SmolLM2's template) has no tool syntax: the tools go into the system message, a past
/// call is written as the generic JSON (which parses back into the call) and a tool result
/// becomes a user turn.
#[test]
fn the_generic_form_describes_tools_and_writes_history_as_json() {
    let source = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    let template = ChatTemplate::new(source, "", "").unwrap();
    assert_eq!(template.tool_format(), ToolCallFormat::Generic);
    let messages = [
        ChatMessage::new("user", "Weather in Paris?"),
        ChatMessage::new("assistant", "").with_tool_calls(vec![json!({"id": "abc", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}})]),
        ChatMessage::tool_result("22 degrees", "abc", Some("get_weather".into())),
    ];
    let prompt = prepare_chat(&template, &messages, Some(&spec(None, None))).unwrap();
    assert!(prompt.starts_with("<|im_start|>system\nYou can call one or more of these tools."), "{prompt}");
    assert!(prompt.contains(r#"{"type":"function","function":{"name":"get_weather""#), "{prompt}");
    let written = "{\"tool_calls\":[{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}]}";
    assert!(prompt.contains(&format!("<|im_start|>assistant\n{written}<|im_end|>")), "{prompt}");
    assert_eq!(
        calls(&parse_tool_calls(ToolCallFormat::Generic, written)),
        [("get_weather".into(), json!({"city": "Paris"}))]
    );
    assert!(
        prompt.contains(
            "<|im_start|>user\n{\"tool_response\":{\"name\":\"get_weather\",\"content\":\"22 degrees\"}}<|im_end|>"
        ),
        "{prompt}"
    );
    // tool_choice none: the tools are not shown.
    let none = prepare_chat(&template, &messages[..1], Some(&spec(Some(json!("none")), None))).unwrap();
    assert_eq!(none, "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n");
}

#[test]
fn call_ids_are_nine_letters_or_digits_and_distinct() {
    let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_call_id()).collect();
    assert_eq!(ids.len(), 1000);
    assert!(ids.iter().all(|id| id.len() == 9 && id.chars().all(|c| c.is_ascii_alphanumeric())));
}

#[test]
fn messages_parse_from_openai_json() {
    let text = r#"[{"role": "user", "content": "hi"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "abc", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "ok", "tool_call_id": "abc", "name": "f"}]"#;
    let messages = messages_from_json(text).unwrap();
    assert_eq!(messages[1].content, "");
    assert_eq!(messages[1].tool_calls.as_ref().map(Vec::len), Some(1));
    assert_eq!(messages[2], ChatMessage::tool_result("ok", "abc", Some("f".into())));
    for (bad, fragment) in [
        ("{}", "JSON array"),
        ("[1]", "messages[0] must be an object"),
        (r#"[{"content": "x"}]"#, "messages[0].role is required"),
        (r#"[{"role": "user"}]"#, "messages[0].content is required"),
        (r#"[{"role": "user", "content": 3}]"#, "messages[0].content must be a string"),
        ("[", "not valid JSON"),
    ] {
        let err = messages_from_json(bad).unwrap_err();
        assert_eq!(err.param(), Some("messages"));
        assert!(err.to_string().contains(fragment), "{bad}: {err}");
    }
}
