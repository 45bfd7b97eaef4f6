//! The engine (the path every front door takes) on the tiny Qwen 2 and Qwen 3 fixtures: the
//! architecture dispatch loads them, a text prompt is tokenized as llama.cpp tokenizes it, and
//! greedy generation gives llama.cpp's tokens (`tests/fixtures/qwen{2,3}/llamacpp.json`, F32
//! files, up to llama.cpp's first step whose top-2 gap is under 0.02); a chat
//! request renders with the real Qwen template given as the engine's `chat_template` option.

mod common;

use common::greedy;

use common::reference::{fixture_path, ids, llamacpp_prompts, prompts, steps_before_near_tie};
use cortexstream::{ChatMessage, Engine, EngineConfig, Prompt, Request};

#[test]
fn text_prompts_generate_llama_cpp_greedy_tokens() {
    for (family, minimum_compared) in [("qwen2", 48), ("qwen3", 7)] {
        let engine = Engine::new(EngineConfig::new(fixture_path(family, "tiny-f32.gguf"))).expect("load");
        let engine = common::AllBlocksFreeAfter(engine);
        assert_eq!(engine.model_info().architecture, family);
        let mut compared = 0;
        let peer_prompts = llamacpp_prompts(family, "tiny-f32.gguf");
        for (prompt, theirs) in prompts(family).iter().zip(&peer_prompts) {
            let text = prompt.text.as_str();
            let expected = ids(&theirs["generated_ids"]);
            let completion = engine.generate(Request::new(text, greedy(expected.len()))).expect("generate");
            assert_eq!(completion.usage.prompt_tokens, ids(&theirs["prompt_ids"]).len(), "{family}: {text:?}");
            let clear = steps_before_near_tie(theirs, 0.02);
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
    let mut config = EngineConfig::new(fixture_path("qwen3", "tiny-f32.gguf"));
    config.chat_template = Some(templates["templates"]["Qwen-Qwen3-0.6B"]["source"].as_str().unwrap().to_string());
    let engine = common::AllBlocksFreeAfter(Engine::new(config).expect("load"));
    let messages =
        vec![ChatMessage::new("system", "You are a terse assistant."), ChatMessage::new("user", "What is 2 + 2?")];
    let chat = engine.generate(Request::new(Prompt::Chat(messages), greedy(4))).expect("chat");
    let text = engine.generate(Request::new(case["rendered"].as_str().unwrap(), greedy(4))).expect("text");
    assert_eq!((chat.usage.prompt_tokens, &chat.token_ids), (text.usage.prompt_tokens, &text.token_ids));
}
