//! Tool calling through the engine on SmolLM2 (issue 20, items 3 and 5): with `tool_choice`
//! required or named, the answer is constrained to a call in the template's own syntax (the
//! generic JSON form for SmolLM2's template; Hermes, Llama 3 and both Mistral syntaxes when the
//! engine is given those templates) whose arguments validate against the tool's schema; with
//! parallel calls off there is exactly one; `none` leaves the prompt as without tools; bad
//! tools fail the submit naming the field, before anything is queued.

mod common;

use cortexstream::tools::{parse_tool_calls, ToolCallFormat};
use cortexstream::{ChatMessage, Engine, EngineConfig, Error, Prompt, Request, SamplingParams, ToolSpec};
use serde_json::{json, Value};

fn engine(chat_template: Option<String>) -> Engine {
    Engine::new(EngineConfig {
        threads: Some(1),
        kv_cache_tokens: 4096,
        chat_template,
        ..EngineConfig::new(common::smollm2_path())
    })
    .expect("SmolLM2 loads")
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.", "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 16}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {
            "type": "object", "properties": {"hours": {"type": "integer", "minimum": 0, "maximum": 23}},
            "required": ["hours"], "additionalProperties": false}}}
    ])
}

/// What `jsonschema` would check for the two tools' arguments.
fn assert_valid_arguments(name: &str, arguments: &str) {
    let value: Value = serde_json::from_str(arguments).unwrap_or_else(|e| panic!("{arguments:?}: {e}"));
    let object = value.as_object().unwrap_or_else(|| panic!("{arguments:?} is not an object"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    match name {
        "get_weather" => {
            assert_eq!(keys, ["city", "unit"], "{arguments}");
            assert!(object["city"].as_str().is_some_and(|c| c.chars().count() <= 16), "{arguments}");
            assert!(["celsius", "fahrenheit"].contains(&object["unit"].as_str().unwrap_or("")), "{arguments}");
        }
        "get_time" => {
            assert_eq!(keys, ["hours"], "{arguments}");
            assert!(object["hours"].as_i64().is_some_and(|h| (0..=23).contains(&h)), "{arguments}");
        }
        other => panic!("a call to an unknown tool {other}"),
    }
}

fn ask() -> Prompt {
    Prompt::Chat(vec![ChatMessage::new("user", "What is the weather in Paris?")])
}

fn request(choice: Value, parallel: bool, seed: u64) -> Request {
    let params =
        SamplingParams { temperature: 1.0, seed: Some(seed), max_tokens: Some(200), ..SamplingParams::default() };
    let spec = ToolSpec::from_json(&tools(), Some(&choice), Some(parallel)).expect("valid tools");
    Request::new(ask(), params).with_tools(spec)
}

/// The real templates with tool syntax, from the fixture transformers' renderings came with.
fn template(name: &str) -> String {
    let fixture = common::fixture("tool_templates.json");
    fixture["templates"][name]["source"].as_str().expect("template").to_string()
}

#[test]
fn forced_calls_validate_in_every_syntax() {
    let cases = [
        (None, ToolCallFormat::Generic),
        (Some(template("Qwen-Qwen2.5-7B-Instruct")), ToolCallFormat::Hermes),
        (Some(template("meta-llama-Llama-3.1-8B-Instruct")), ToolCallFormat::Llama3),
        (Some(template("mistralai-Mistral-Nemo-Instruct-2407")), ToolCallFormat::Mistral),
        (Some(template("unsloth-mistral-Devstral-Small-2507")), ToolCallFormat::MistralArgs),
    ];
    for (source, format) in cases {
        let engine = engine(source);
        assert_eq!(engine.tool_call_format(), format);
        for seed in 0..3 {
            for (choice, names) in [
                (json!("required"), vec!["get_weather", "get_time"]),
                (json!({"type": "function", "function": {"name": "get_time"}}), vec!["get_time"]),
            ] {
                let done = engine.generate(request(choice.clone(), false, seed)).expect("submit");
                let parsed = parse_tool_calls(format, &done.text);
                assert_eq!(parsed.tool_calls.len(), 1, "{format:?} seed {seed} {choice}: {:?}", done.text);
                let call = &parsed.tool_calls[0];
                assert!(names.contains(&call.name.as_str()), "{format:?}: {}", call.name);
                assert_valid_arguments(&call.name, &call.arguments);
                assert_eq!(done.finish_reason.as_str(), "stop", "{format:?}: the grammar completed: {:?}", done.text);
            }
        }
    }
}

#[test]
fn parallel_calls_allow_several_and_each_validates() {
    let engine = engine(Some(template("Qwen-Qwen2.5-7B-Instruct")));
    let mut most = 0;
    for seed in 0..4 {
        let done = engine.generate(request(json!("required"), true, seed)).expect("submit");
        let parsed = parse_tool_calls(ToolCallFormat::Hermes, &done.text);
        if done.finish_reason.as_str() == "stop" {
            assert!(!parsed.tool_calls.is_empty(), "{:?}", done.text);
        }
        for call in &parsed.tool_calls {
            assert_valid_arguments(&call.name, &call.arguments);
        }
        most = most.max(parsed.tool_calls.len());
    }
    assert!(most >= 1);
}

#[test]
fn tool_choice_none_renders_the_prompt_without_tools() {
    let engine = engine(None);
    let plain =
        engine.generate(Request::new(ask(), SamplingParams { max_tokens: Some(1), ..SamplingParams::greedy() }));
    let none = engine.generate(
        Request::new(ask(), SamplingParams { max_tokens: Some(1), ..SamplingParams::greedy() })
            .with_tools(ToolSpec::from_json(&tools(), Some(&json!("none")), None).unwrap()),
    );
    let auto = engine.generate(
        Request::new(ask(), SamplingParams { max_tokens: Some(1), ..SamplingParams::greedy() })
            .with_tools(ToolSpec::from_json(&tools(), None, None).unwrap()),
    );
    let (plain, none, auto) = (plain.unwrap(), none.unwrap(), auto.unwrap());
    assert_eq!(none.usage.prompt_tokens, plain.usage.prompt_tokens);
    assert!(auto.usage.prompt_tokens > plain.usage.prompt_tokens, "auto shows the tools");
}

#[test]
fn bad_tools_fail_the_submit_naming_the_field() {
    let engine = engine(None);
    let before = engine.metrics().requests_submitted;
    let submit = |spec: ToolSpec, prompt: Prompt, constraint: bool| {
        let mut params = SamplingParams::greedy();
        if constraint {
            params.constraint = Some(cortexstream::Constraint::json_object());
        }
        engine.submit(Request::new(prompt, params).with_tools(spec)).map(|_| ()).unwrap_err()
    };
    let invalid_schema = json!([{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "no-such-type"}}}}}]);
    let err = submit(ToolSpec::from_json(&invalid_schema, None, None).unwrap(), ask(), false);
    assert_eq!(err.param(), Some("tools"), "{err}");
    assert!(err.to_string().contains("parameters"), "{err}");
    let required = ToolSpec::from_json(&tools(), Some(&json!("required")), None).unwrap();
    let err = submit(required.clone(), ask(), true);
    assert_eq!(err.param(), Some("tool_choice"), "{err}");
    let err = submit(required.clone(), Prompt::Text("Hello".into()), false);
    assert_eq!(err.param(), Some("tools"), "{err}");
    let orphan = Prompt::Chat(vec![ChatMessage::new("user", "hi"), ChatMessage::new("tool", "22")]);
    let err = submit(required, orphan, false);
    assert!(matches!(err, Error::InvalidRequest { param: "messages", .. }), "{err}");
    assert_eq!(engine.metrics().requests_submitted, before, "nothing was queued");
}
