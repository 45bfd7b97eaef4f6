//! The engine (the path every front door takes) on the tiny Qwen 2 and Qwen 3 fixtures: the
//! architecture dispatch loads them, a text prompt is tokenized as llama.cpp tokenizes it, and
//! greedy generation gives llama.cpp's tokens (`tests/fixtures/qwen{2,3}/llamacpp.json`, F32
//! files, up to llama.cpp's first step whose top-2 gap is under 0.02 or unreported); a chat
//! request renders with the real Qwen template given as the engine's `chat_template` option.

mod common;

use std::path::PathBuf;

use cortexstream::{ChatMessage, Engine, EngineConfig, Prompt, Request, SamplingParams};

fn fixture(family: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(family).join(name)
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams { max_tokens: Some(max_tokens), ignore_eos: true, ..SamplingParams::greedy() }
}

/// Steps of llama.cpp's greedy run before its first near tie (gap under `tie`, or unreported).
fn clear_steps(prompt: &serde_json::Value, tie: f64) -> usize {
    let steps = prompt["steps"].as_array().expect("steps");
    steps
        .iter()
        .position(|s| match s["top"].as_array() {
            Some(top) => top[0]["logprob"].as_f64().unwrap() - top[1]["logprob"].as_f64().unwrap() < tie,
            None => true,
        })
        .unwrap_or(steps.len())
}

#[test]
fn text_prompts_generate_llama_cpp_greedy_tokens() {
    for (family, minimum_compared) in [("qwen2", 48), ("qwen3", 7)] {
        let engine = Engine::new(EngineConfig::new(fixture(family, "tiny-f32.gguf"))).expect("load");
        let engine = common::AllBlocksFreeAfter(engine);
        assert_eq!(engine.model_info().architecture, family);
        let reference = common::fixture(&format!("{family}/reference.json"));
        let peer = common::fixture(&format!("{family}/llamacpp.json"));
        let mut compared = 0;
        let peer_prompts = peer["files"]["tiny-f32.gguf"]["prompts"].as_array().expect("prompts");
        for (text, theirs) in reference["prompts"].as_array().expect("prompts").iter().zip(peer_prompts) {
            let text = text["text"].as_str().expect("text");
            let expected: Vec<u32> =
                theirs["generated_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            let completion = engine.generate(Request::new(text, greedy(expected.len()))).expect("generate");
            assert_eq!(
                completion.usage.prompt_tokens,
                theirs["prompt_ids"].as_array().unwrap().len(),
                "{family}: {text:?}"
            );
            let clear = clear_steps(theirs, 0.02);
            assert_eq!(completion.token_ids[..clear], expected[..clear], "{family}: {text:?}");
            compared += clear;
        }
        assert!(compared >= minimum_compared, "{family}: compared {compared} tokens");
    }
}

#[test]
fn chat_renders_with_the_real_qwen3_template() {
    let templates = common::fixture("chat_templates.json");
    let case = templates["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["template"] == "Qwen-Qwen3-0.6B"
                && c["conversation"] == "system_user"
                && c["add_generation_prompt"] == true
        })
        .expect("the fixture has the case");
    let mut config = EngineConfig::new(fixture("qwen3", "tiny-f32.gguf"));
    config.chat_template = Some(templates["templates"]["Qwen-Qwen3-0.6B"]["source"].as_str().unwrap().to_string());
    let engine = common::AllBlocksFreeAfter(Engine::new(config).expect("load"));
    let messages =
        vec![ChatMessage::new("system", "You are a terse assistant."), ChatMessage::new("user", "What is 2 + 2?")];
    let chat = engine.generate(Request::new(Prompt::Chat(messages), greedy(4))).expect("chat");
    let text = engine.generate(Request::new(case["rendered"].as_str().unwrap(), greedy(4))).expect("text");
    assert_eq!((chat.usage.prompt_tokens, &chat.token_ids), (text.usage.prompt_tokens, &text.token_ids));
}
