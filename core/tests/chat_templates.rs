//! The real chat templates of the five families (Qwen 2.5, Qwen 3, Llama 3.1, Llama 3.2,
//! Phi-3.5, Mistral Nemo) render byte for byte what Hugging Face `transformers` renders
//! (`tests/reference/chat_templates.py` wrote its output for every conversation, with and
//! without the generation prompt, into `tests/fixtures/chat_templates.json`), and raise the
//! template's own message where transformers raises.

mod common;

use cortexstream::chat::ChatTemplate;
use cortexstream::request::ChatMessage;
use cortexstream::Error;

fn messages(conversation: &serde_json::Value) -> Vec<ChatMessage> {
    conversation
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().expect("role"), m["content"].as_str().expect("content")))
        .collect()
}

#[test]
fn every_family_renders_exactly_as_transformers() {
    let fixture = common::fixture("chat_templates.json");
    let now = fixture["fixed_now_unix"].as_u64().expect("fixed time");
    let mut failures = Vec::new();
    let cases = fixture["cases"].as_array().expect("cases");
    for case in cases {
        let name = case["template"].as_str().expect("template name");
        let template = &fixture["templates"][name];
        let text = |key: &str| template[key].as_str().expect("template field");
        let compiled = ChatTemplate::new(text("source"), text("bos_token"), text("eos_token"))
            .unwrap_or_else(|e| panic!("{name} does not compile: {e}"))
            .at_fixed_time(now);
        let conversation = case["conversation"].as_str().expect("conversation");
        let add_generation_prompt = case["add_generation_prompt"].as_bool().expect("flag");
        let ours = compiled.render(&messages(&fixture["conversations"][conversation]), add_generation_prompt);
        let label = format!("{name} / {conversation} / add_generation_prompt={add_generation_prompt}");
        match (&ours, case["rendered"].as_str(), case["raises"].as_str()) {
            (Ok(ours), Some(expected), _) if ours == expected => {}
            (Err(Error::ChatTemplate(message)), _, Some(expected)) if message == expected => {}
            _ => failures.push(format!("{label}:\n  ours:         {ours:?}\n  transformers: {:?}", case)),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
    assert_eq!(cases.len(), 11 * 8 * 2, "every template × conversation × flag is in the fixture");
}

/// One jinja2 feature per template (transformers' `tojson`, `raise_exception` and
/// `strftime_now`; `namespace`, whitespace control, Python string methods, filters, tests,
/// number printing), rendered over the `multi_turn` conversation: the dialect the shipped
/// templates are written in, including parts the conversations above do not reach (tool
/// templates print `tojson`).
#[test]
fn the_jinja_dialect_matches_transformers() {
    let fixture = common::fixture("chat_templates.json");
    let now = fixture["fixed_now_unix"].as_u64().expect("fixed time");
    let conversation = messages(&fixture["conversations"]["multi_turn"]);
    let mut failures = Vec::new();
    let cases = fixture["dialect"].as_array().expect("dialect cases");
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let source = case["source"].as_str().expect("source");
        let ours = ChatTemplate::new(source, "<s>", "</s>")
            .map(|t| t.at_fixed_time(now))
            .and_then(|t| t.render(&conversation, false));
        match (&ours, case["rendered"].as_str(), case["raises"].as_str()) {
            (Ok(ours), Some(expected), _) if ours == expected => {}
            (Err(Error::ChatTemplate(message)), _, Some(expected)) if message == expected => {}
            _ => failures.push(format!("{name}: {source}\n  ours:         {ours:?}\n  transformers: {case}")),
        }
    }
    assert!(failures.is_empty(), "{} of {} differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
