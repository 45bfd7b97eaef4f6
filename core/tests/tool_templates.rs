//! Real tool-calling chat templates (Qwen 2.5, QwQ, Qwen 3, Hermes 2 Pro, Hermes 3, Llama 3.1 /
//! 3.2 / 3.3, Mistral Nemo, Mistral Small 3.2, Devstral, Ministral 3, and two without tool
//! syntax) render conversations with `tools`,
//! assistant `tool_calls` and `tool` results byte for byte as Hugging Face `transformers`
//! renders them (`tests/reference/tool_templates.py` wrote `tests/fixtures/tool_templates.json`),
//! the tool-call syntax is detected from each template's source, and the calls each template
//! writes into its own history parse back into the same calls.

mod common;

use cortexstream::chat::ChatTemplate;
use cortexstream::request::ChatMessage;
use cortexstream::tools::{parse_tool_calls, ToolCallFormat};
use cortexstream::Error;
use serde_json::Value;

fn messages(conversation: &Value) -> Vec<ChatMessage> {
    serde_json::from_value(conversation.clone()).expect("fixture messages are chat messages")
}

fn template(fixture: &Value, name: &str) -> ChatTemplate {
    let template = &fixture["templates"][name];
    let text = |key: &str| template[key].as_str().expect("template field");
    ChatTemplate::new(text("source"), text("bos_token"), text("eos_token"))
        .unwrap_or_else(|e| panic!("{name} does not compile: {e}"))
        .at_fixed_time(fixture["fixed_now_unix"].as_u64().expect("fixed time"))
}

fn tools(fixture: &Value) -> Vec<Value> {
    fixture["tools"].as_array().expect("tools").clone()
}

#[test]
fn tool_conversations_render_exactly_as_transformers() {
    let fixture = common::fixture("tool_templates.json");
    let tools = tools(&fixture);
    let mut failures = Vec::new();
    let cases = fixture["cases"].as_array().expect("cases");
    for case in cases {
        let name = case["template"].as_str().expect("template name");
        let conversation = case["conversation"].as_str().expect("conversation");
        let add_generation_prompt = case["add_generation_prompt"].as_bool().expect("flag");
        let ours = template(&fixture, name).render_with_tools(
            &messages(&fixture["conversations"][conversation]),
            Some(&tools),
            add_generation_prompt,
        );
        match (&ours, case["rendered"].as_str(), case["raises"].as_str()) {
            (Ok(ours), Some(expected), _) if ours == expected => {}
            (Err(Error::ChatTemplate(message)), _, Some(expected)) if message == expected => {}
            _ => failures.push(format!(
                "{name} / {conversation} / add_generation_prompt={add_generation_prompt}:\n  ours:         {ours:?}\n  transformers: {case}"
            )),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
    assert_eq!(cases.len(), 14 * 4 * 2, "every template × conversation × flag is in the fixture");
}

#[test]
fn the_call_syntax_is_detected_from_the_template_source() {
    let fixture = common::fixture("tool_templates.json");
    for (name, template) in fixture["templates"].as_object().expect("templates") {
        let detected = ToolCallFormat::detect(template["source"].as_str().expect("source"));
        assert_eq!(detected.as_str(), template["tool_format"].as_str().expect("format"), "{name}");
    }
}

/// Each template's own rendering of an assistant turn that calls tools (the text after the
/// generation prompt, up to the end-of-turn token) parses back into those calls.
#[test]
fn calls_parse_back_out_of_each_templates_own_rendering() {
    let fixture = common::fixture("tool_templates.json");
    let mut checked = 0;
    for example in fixture["examples"].as_array().expect("examples") {
        let name = example["template"].as_str().expect("template");
        let template = &fixture["templates"][name];
        let format = ToolCallFormat::detect(template["source"].as_str().expect("source"));
        let (Some(prompt), Some(whole)) =
            (example["prompt"]["rendered"].as_str(), example["whole"]["rendered"].as_str())
        else {
            continue; // the template refuses this example (Llama 3.x: one call at a time)
        };
        if format == ToolCallFormat::Generic {
            continue; // no native syntax to read: these templates do not print calls
        }
        let written = assistant_turn(prompt, whole);
        let eos = template["eos_token"].as_str().expect("eos");
        let written = [eos, "<|eom_id|>", "<|im_end|>"]
            .iter()
            .filter_map(|end| written.find(end))
            .min()
            .map_or(written, |end| &written[..end]);
        let parsed = parse_tool_calls(format, written);
        let expected =
            fixture["call_examples"][example["example"].as_str().expect("example")]["calls"].as_array().expect("calls");
        let got: Vec<(String, Value)> = parsed
            .tool_calls
            .iter()
            .map(|c| (c.name.clone(), serde_json::from_str(&c.arguments).expect("arguments are JSON")))
            .collect();
        let want: Vec<(String, Value)> = expected
            .iter()
            .map(|c| (c["function"]["name"].as_str().unwrap().to_string(), c["function"]["arguments"].clone()))
            .collect();
        assert_eq!(got, want, "{name}: {written:?}");
        // Qwen 3 writes an empty reasoning block before the calls; reasoning stays content.
        let content = parsed.content.trim();
        assert!(content.is_empty() || content == "<think>\n\n</think>", "{name}: leftover content {content:?}");
        checked += 1;
    }
    assert!(checked >= 14, "only {checked} examples checked");
}

/// The assistant's turn in `whole` (history plus the turn), given `prompt` (history plus the
/// generation prompt). Usually `prompt` is a prefix; a template whose generation prompt opens
/// a block the turn does not have (QwQ's `<think>\n`) diverges inside it, and the turn then
/// starts after the header line the two share.
fn assistant_turn<'a>(prompt: &str, whole: &'a str) -> &'a str {
    if let Some(turn) = whole.strip_prefix(prompt) {
        return turn;
    }
    let common = prompt.bytes().zip(whole.bytes()).take_while(|(a, b)| a == b).count();
    let line_start = whole[..common].rfind('\n').map_or(0, |at| at + 1);
    &whole[line_start..]
}
