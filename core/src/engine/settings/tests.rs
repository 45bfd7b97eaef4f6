use super::*;
use crate::Error;

fn map(entries: &[(&str, OptionValue)]) -> OptionValue {
    OptionValue::Map(entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
}

fn refused(entries: &[(&str, OptionValue)]) -> (&'static str, String) {
    match EngineConfig::from_settings("m.gguf", map(entries)) {
        Err(Error::InvalidRequest { param, message }) => (param, message),
        other => panic!("expected an invalid setting, got {other:?}"),
    }
}

#[test]
fn the_setting_names_are_the_config_fields_but_the_model() {
    let names = EngineConfig::setting_names();
    for name in [
        "tokenizer",
        "embedding_model",
        "max_running",
        "max_batch_tokens",
        "target_step_ms",
        "max_prefill_tokens",
        "kv_cache_tokens",
        "block_size",
        "context_length",
        "threads",
        "max_queue",
        "chat_template",
        "log_prompts",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert!(!names.contains(&"model"));
}

#[test]
fn no_settings_and_null_settings_are_the_defaults() {
    let defaults = EngineConfig::new("m.gguf");
    for settings in [OptionValue::Null, map(&[]), map(&[("max_running", OptionValue::Null)])] {
        let config = EngineConfig::from_settings("m.gguf", settings).unwrap();
        assert_eq!(format!("{config:?}"), format!("{defaults:?}"));
    }
}

#[test]
fn every_kind_of_setting_is_read() {
    let config = EngineConfig::from_settings(
        "m.gguf",
        map(&[
            ("tokenizer", OptionValue::Str("t.json".into())),
            ("max_running", OptionValue::Int(3)),
            ("target_step_ms", OptionValue::Float(12.5)),
            ("threads", OptionValue::Int(1)),
            ("chat_template", OptionValue::Str("{{ x }}".into())),
            ("log_prompts", OptionValue::Bool(true)),
        ]),
    )
    .unwrap();
    assert_eq!(config.model, PathBuf::from("m.gguf"));
    assert_eq!(config.tokenizer, Some(PathBuf::from("t.json")));
    assert_eq!(config.max_running, 3);
    assert_eq!(config.target_step_ms, Some(12.5));
    assert_eq!(config.threads, Some(1));
    assert_eq!(config.chat_template.as_deref(), Some("{{ x }}"));
    assert!(config.log_prompts);
}

#[test]
fn a_zero_step_target_is_a_fixed_budget() {
    let config = EngineConfig::from_settings("m.gguf", map(&[("target_step_ms", OptionValue::Int(0))])).unwrap();
    assert_eq!(config.target_step_ms, None);
}

#[test]
fn an_unknown_setting_is_refused_by_name_listing_the_settings() {
    let (param, message) = refused(&[("max_runing", OptionValue::Int(1))]);
    assert_eq!(param, UNKNOWN_SETTING_PARAM);
    assert!(message.contains("unknown setting `max_runing`"), "{message}");
    assert!(message.contains(&format!("the settings are {}", EngineConfig::setting_names().join(", "))), "{message}");
}

#[test]
fn a_value_out_of_range_names_the_setting_and_the_value() {
    let (param, message) = refused(&[("max_running", OptionValue::Int(0))]);
    assert_eq!(param, "max_running");
    assert!(message.contains("max_running must be at least 1, got 0"), "{message}");
    assert_eq!(refused(&[("threads", OptionValue::Int(0))]).0, "threads");
    assert_eq!(refused(&[("target_step_ms", OptionValue::Float(f64::NAN))]).0, "target_step_ms");
    assert_eq!(refused(&[("context_length", OptionValue::Int(0))]).0, "context_length");
}

#[test]
fn a_value_of_the_wrong_type_names_the_setting() {
    for (name, value) in [
        ("max_running", OptionValue::Int(-1)),
        ("kv_cache_tokens", OptionValue::Float(1.5)),
        ("threads", OptionValue::Str("many".into())),
        ("log_prompts", OptionValue::Int(1)),
        ("tokenizer", OptionValue::Int(1)),
        ("block_size", OptionValue::Unsupported("function".into())),
    ] {
        let (param, message) = refused(&[(name, value)]);
        assert_eq!(param, name, "{message}");
        assert!(message.contains("invalid"), "{message}");
    }
}

#[test]
fn settings_must_be_a_map() {
    let error = EngineConfig::from_settings("m.gguf", OptionValue::Int(3)).unwrap_err();
    assert!(error.to_string().contains("expected a map of engine settings, got an integer"), "{error}");
}
