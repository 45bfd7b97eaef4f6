//! Constrained decoding on SmolLM2 (issue 20, item 1): outputs follow their JSON schema,
//! regex or choices and end `stop` when complete; a grammar that cannot finish in
//! `max_tokens` ends `length`; bad constraints fail the submit naming their field, before
//! anything is queued; one schema compiles once; a constrained greedy request gives the same
//! tokens alone and in a batch.

mod common;

use cortexstream::{
    ChatMessage, Completion, Constraint, Engine, EngineConfig, FinishReason, Prompt, Request, SamplingParams,
    StopReason,
};
use serde_json::Value;

fn engine() -> Engine {
    Engine::new(EngineConfig { threads: Some(1), kv_cache_tokens: 2048, ..EngineConfig::new(common::smollm2_path()) })
        .expect("SmolLM2 loads")
}

fn ask(question: &str) -> Prompt {
    Prompt::Chat(vec![ChatMessage::new("user", question)])
}

fn constrained(constraint: Constraint, temperature: f32, seed: u64, max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature,
        seed: Some(seed),
        max_tokens: Some(max_tokens),
        constraint: Some(constraint),
        ..SamplingParams::default()
    }
}

fn run(engine: &Engine, prompt: Prompt, params: SamplingParams) -> Completion {
    let done = engine.generate(Request::new(prompt, params)).expect("submit");
    assert_eq!(done.error, None);
    done
}

const PERSON: &str = r#"{
  "type": "object",
  "properties": {
    "name": {"type": "string", "maxLength": 12},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "role": {"enum": ["admin", "user", "guest"]}
  },
  "required": ["name", "age", "role"],
  "additionalProperties": false
}"#;

/// The checks `jsonschema` would make for [`PERSON`] (the Python suites use `jsonschema` itself).
fn assert_is_person(text: &str) {
    let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?} is not JSON: {e}"));
    let object = value.as_object().unwrap_or_else(|| panic!("{text:?} is not an object"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["age", "name", "role"], "{text}");
    assert!(object["name"].as_str().is_some_and(|n| n.chars().count() <= 12), "{text}");
    assert!(object["age"].as_i64().is_some_and(|a| (0..=120).contains(&a)), "{text}");
    assert!(["admin", "user", "guest"].contains(&object["role"].as_str().unwrap_or("")), "{text}");
}

#[test]
fn json_schema_outputs_validate_greedy_and_sampled() {
    let engine = engine();
    for (temperature, seed) in [(0.0, 0), (1.0, 1), (1.0, 2)] {
        let params = constrained(Constraint::JsonSchema(PERSON.into()), temperature, seed, 64);
        let done = run(&engine, ask("Describe a user of a web site as JSON."), params);
        assert_eq!(done.finish_reason, FinishReason::Stop, "T={temperature} seed={seed}: {:?}", done.text);
        assert_is_person(&done.text);
    }
    assert_eq!(engine.constraint_compilations(), 1, "one schema compiles once");
}

#[test]
fn regex_and_choices_outputs_match() {
    let engine = engine();
    let date = Constraint::Regex(r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]".into());
    let done = run(&engine, ask("When did you last travel?"), constrained(date, 1.0, 7, 16));
    assert_eq!(done.finish_reason, FinishReason::Stop, "{:?}", done.text);
    let bytes = done.text.as_bytes();
    assert_eq!(bytes.len(), 10, "{:?}", done.text);
    assert!(done.text.starts_with("20") && bytes[4] == b'-' && bytes[7] == b'-', "{:?}", done.text);

    let choices = vec!["red".to_string(), "green".to_string(), "blue".to_string()];
    for seed in [1, 2] {
        let params = constrained(Constraint::Choices(choices.clone()), 1.0, seed, 8);
        let done = run(&engine, ask("Name a colour."), params);
        assert_eq!(done.finish_reason, FinishReason::Stop);
        assert_eq!(done.stop_reason, StopReason::GrammarComplete, "the choice ended it, not a token");
        assert!(choices.contains(&done.text), "{:?}", done.text);
    }
}

#[test]
fn a_lark_grammar_constrains_the_output() {
    let engine = engine();
    let grammar =
        Constraint::Grammar("start: \"yes\" | \"no\" | \"maybe (\" NUMBER \"%)\"\nNUMBER: /[0-9]{1,2}/".into());
    let done = run(&engine, ask("Will it rain tomorrow?"), constrained(grammar, 1.0, 3, 12));
    assert_eq!(done.finish_reason, FinishReason::Stop);
    let t = done.text.as_str();
    let maybe = t.strip_prefix("maybe (").and_then(|r| r.strip_suffix("%)"));
    assert!(t == "yes" || t == "no" || maybe.is_some_and(|n| n.parse::<u8>().is_ok()), "{t:?}");
}

#[test]
fn a_grammar_that_cannot_finish_in_max_tokens_ends_with_length() {
    let engine = engine();
    let done = run(&engine, ask("Describe a user."), constrained(Constraint::JsonSchema(PERSON.into()), 0.0, 0, 3));
    assert_eq!(done.finish_reason, FinishReason::Length);
    assert_eq!(done.usage.completion_tokens, 3);
}

#[test]
fn bad_constraints_fail_the_submit_naming_their_field_before_anything_is_queued() {
    let engine = engine();
    let cases = [
        (Constraint::JsonSchema("{not json".into()), "json_schema"),
        (
            Constraint::JsonSchema(r#"{"type": "object", "properties": {"a": {"type": "nonsense"}}}"#.into()),
            "json_schema",
        ),
        (Constraint::Regex("(unclosed".into()), "regex"),
        (Constraint::Grammar("start: undefined_rule".into()), "grammar"),
        (Constraint::Choices(vec![]), "choices"),
    ];
    for (constraint, field) in cases {
        let params = constrained(constraint.clone(), 0.0, 0, 4);
        let err = engine.submit(Request::new("Hi", params)).expect_err(&format!("{constraint:?} must be refused"));
        assert_eq!(err.param(), Some(field), "{constraint:?}: {err}");
        assert_eq!(err.code(), "invalid_request");
    }
    let m = engine.metrics();
    assert_eq!(m.requests_submitted, 0, "nothing was queued");
}

/// One greedy request of every constraint kind, and a sampled companion of each, so a batch
/// of eight mixes kinds, temperatures and finish steps.
fn every_kind() -> Vec<(Prompt, Constraint)> {
    vec![
        (ask("Describe an admin as JSON."), Constraint::JsonSchema(PERSON.into())),
        (ask("When were you born?"), Constraint::Regex(r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]".into())),
        (
            ask("Will it rain tomorrow?"),
            Constraint::Grammar("start: \"yes\" | \"no\" | \"maybe (\" NUMBER \"%)\"\nNUMBER: /[0-9]{1,2}/".into()),
        ),
        (ask("Name a colour."), Constraint::Choices(vec!["red".into(), "green".into(), "dark blue".into()])),
    ]
}

#[test]
fn a_constrained_greedy_request_gives_the_same_tokens_alone_and_in_a_batch_for_every_kind() {
    let engine = engine();
    let kinds = every_kind();
    let alone: Vec<Completion> =
        kinds.iter().map(|(prompt, c)| run(&engine, prompt.clone(), constrained(c.clone(), 0.0, 0, 40))).collect();

    // The same requests beside sampled constrained ones (eight in all), all submitted before
    // the engine takes any of them, so they share steps.
    let sampled =
        kinds.iter().enumerate().map(|(i, (prompt, c))| (prompt.clone(), constrained(c.clone(), 1.0, i as u64, 40)));
    let greedy = kinds.iter().map(|(prompt, c)| (prompt.clone(), constrained(c.clone(), 0.0, 0, 40)));
    let handles: Vec<_> = greedy
        .chain(sampled)
        .map(|(prompt, params)| engine.submit(Request::new(prompt, params)).expect("submit"))
        .collect();
    let batched: Vec<Completion> = handles.into_iter().map(|h| h.wait()).collect();
    for ((alone, batched), (_, constraint)) in alone.iter().zip(&batched).zip(&kinds) {
        assert_eq!(batched.error, None);
        assert_eq!(batched.token_ids, alone.token_ids, "{constraint:?}");
        assert_eq!(batched.finish_reason, alone.finish_reason, "{constraint:?}");
    }
}

#[test]
fn the_masks_of_eight_constrained_streams_are_ready_before_sampling() {
    let engine = engine();
    let before = engine.constraint_mask_counts();
    let handles: Vec<_> = every_kind()
        .into_iter()
        .cycle()
        .take(8)
        .enumerate()
        .map(|(i, (prompt, c))| engine.submit(Request::new(prompt, constrained(c, 1.0, i as u64, 24))).expect("submit"))
        .collect();
    let sampled: u64 = handles
        .into_iter()
        .map(|h| {
            let done = h.wait();
            assert_eq!(done.error, None);
            done.usage.completion_tokens as u64
        })
        .sum();
    let counts = engine.constraint_mask_counts();
    // Every token a constrained stream sampled used a mask computed beside the forward.
    assert_eq!(counts.prepared - before.prepared, sampled);
    assert_eq!(counts.late - before.late, 0);
    assert_eq!(engine.constraint_compilations(), 4, "each distinct constraint compiled once");
    assert_eq!(engine.constraint_cache_len(), 4, "and kept compiled");
}

#[test]
fn a_sentencepiece_vocabulary_with_byte_fallback_is_constrained_too() {
    // Gemma 3: SentencePiece pieces (`▁` as a space, `<0xAB>` byte tokens) and 262k ids.
    let engine = Engine::new(EngineConfig {
        threads: Some(1),
        kv_cache_tokens: 512,
        ..EngineConfig::new(common::gemma3_path())
    })
    .expect("Gemma 3 loads");
    let choices = vec!["été".to_string(), "hiver".to_string(), "printemps à Paris".to_string()];
    for seed in [1, 2, 3] {
        let done = run(
            &engine,
            Prompt::Text("Pick a season:".into()),
            constrained(Constraint::Choices(choices.clone()), 1.0, seed, 12),
        );
        assert_eq!(done.finish_reason, FinishReason::Stop);
        assert!(choices.contains(&done.text), "{:?}", done.text);
    }
    let date = Constraint::Regex(r"20[0-9]{2}-[01][0-9]-[0-3][0-9]".into());
    let done = run(&engine, Prompt::Text("The date today is".into()), constrained(date, 1.0, 1, 20));
    assert_eq!(done.finish_reason, FinishReason::Stop);
    assert_eq!(done.text.len(), 10, "{:?}", done.text);
}
