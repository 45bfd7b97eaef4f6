use super::*;
use crate::request::StopCriteria;

fn map(entries: &[(&str, OptionValue)]) -> OptionValue {
    OptionValue::Map(entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
}

fn parse(entries: &[(&str, OptionValue)]) -> Result<RequestOptions> {
    RequestOptions::from_value(map(entries))
}

fn rejected(entries: &[(&str, OptionValue)]) -> (&'static str, String) {
    let error = parse(entries).unwrap_err();
    (error.param().unwrap_or("?"), error.to_string())
}

#[test]
fn an_empty_map_or_null_is_every_default() {
    assert_eq!(parse(&[]).unwrap(), RequestOptions::default());
    assert_eq!(RequestOptions::from_value(OptionValue::Null).unwrap(), RequestOptions::default());
}

#[test]
fn every_sampling_field_and_the_extras_are_read() {
    let options = parse(&[
        ("temperature", OptionValue::Float(0.5)),
        ("top_k", OptionValue::Int(7)),
        ("max_tokens", OptionValue::Int(3)),
        ("seed", OptionValue::Int(u64::MAX.into())),
        ("stop", OptionValue::Str("x".into())),
        ("stop_token_ids", OptionValue::List(vec![OptionValue::Int(2)])),
        ("ignore_eos", OptionValue::Bool(true)),
        ("logit_bias", map(&[("351", OptionValue::Int(-100)), ("12", OptionValue::Float(1.5))])),
        ("priority", OptionValue::Int(-2)),
        ("regex", OptionValue::Str("a+".into())),
    ])
    .unwrap();
    let p = &options.sampling;
    assert_eq!((p.temperature, p.top_k, p.max_tokens, p.seed), (0.5, 7, Some(3), Some(u64::MAX)));
    assert_eq!((p.stop.clone(), p.stop_token_ids.clone(), p.ignore_eos), (vec!["x".to_string()], vec![2], true));
    assert_eq!(p.logit_bias, vec![(12, 1.5), (351, -100.0)]);
    assert_eq!(p.constraint, Some(Constraint::Regex("a+".into())));
    assert_eq!(options.priority, -2);
}

#[test]
fn null_keeps_the_default() {
    let options = parse(&[("temperature", OptionValue::Null), ("max_tokens", OptionValue::Null)]).unwrap();
    assert_eq!(options, RequestOptions::default());
}

#[test]
fn a_wrong_type_names_its_field() {
    let (param, message) =
        rejected(&[("top_p", OptionValue::Float(0.5)), ("temperature", OptionValue::Str("hot".into()))]);
    assert_eq!(param, "temperature");
    assert!(message.contains("invalid type: string \"hot\""), "{message}");
    let (param, message) = rejected(&[("stop", OptionValue::Int(5))]);
    assert_eq!(param, "stop");
    assert!(message.contains("expected a string or a list of strings"), "{message}");
    let (param, message) = rejected(&[("top_k", OptionValue::Float(2.5))]);
    assert_eq!(param, "top_k");
    assert!(message.contains("floating point `2.5`"), "{message}");
    let (param, _) = rejected(&[("max_tokens", OptionValue::Int(-5))]);
    assert_eq!(param, "max_tokens");
    let (param, message) = rejected(&[("json_schema", OptionValue::Unsupported("bytes".into()))]);
    assert_eq!(param, "json_schema");
    assert!(message.contains("invalid type: bytes"), "{message}");
}

#[test]
fn an_unknown_field_is_named() {
    let (param, message) = rejected(&[("temprature", OptionValue::Float(0.5))]);
    assert_eq!(param, UNKNOWN_FIELD_PARAM);
    assert!(message.contains("unknown option `temprature`") && message.contains("temperature"), "{message}");
}

#[test]
fn logit_bias_keys_must_be_token_ids() {
    for key in ["abc", "-1", "1099511627776"] {
        let (param, message) = rejected(&[("logit_bias", map(&[(key, OptionValue::Int(1))]))]);
        assert_eq!(param, "logit_bias");
        assert!(message.contains("token ids"), "{message}");
    }
    let (param, _) = rejected(&[("logit_bias", OptionValue::List(vec![OptionValue::Int(351)]))]);
    assert_eq!(param, "logit_bias");
}

#[test]
fn non_finite_numbers_reach_validation() {
    let options = parse(&[("temperature", OptionValue::Float(f64::NAN))]).unwrap();
    let error = options.sampling.validate(100).unwrap_err();
    assert_eq!(error.param(), Some("temperature"));
}

#[test]
fn two_constraints_name_the_second() {
    let (param, message) = rejected(&[("regex", OptionValue::Str("a".into())), ("choices", OptionValue::List(vec![]))]);
    assert_eq!(param, "choices");
    assert!(message.contains("only one of"), "{message}");
    let schema = parse(&[("json_schema", map(&[("type", OptionValue::Str("string".into()))]))]).unwrap();
    assert_eq!(schema.sampling.constraint, Some(Constraint::JsonSchema(r#"{"type":"string"}"#.into())));
}

#[test]
fn json_deserializes_through_the_same_rules() {
    let options: RequestOptions =
        serde_json::from_str(r#"{"temperature": 0, "top_k": 3.0, "stop": ["a"], "logit_bias": {"5": 2}}"#).unwrap();
    assert_eq!((options.sampling.temperature, options.sampling.top_k), (0.0, 3));
    let error = serde_json::from_str::<RequestOptions>(r#"{"stop": 5}"#).unwrap_err().to_string();
    assert!(error.contains("`stop`") && error.contains("a string or a list of strings"), "{error}");
}

#[test]
fn the_field_list_is_the_structs() {
    let names = RequestOptions::field_names();
    for name in ["temperature", "max_tokens", "stop", "logit_bias", "priority", "json_schema", "response_format"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert!(!names.contains(&"constraint"), "the constraint is given through its five forms");
}

#[test]
fn split_gives_the_sampler_its_fields_and_the_sequence_the_stop_criteria() {
    let params = SamplingParams {
        temperature: 0.3,
        seed: Some(9),
        logit_bias: vec![(1, 2.0)],
        max_tokens: Some(4),
        stop: vec!["x".into()],
        stop_token_ids: vec![7],
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let (sampler, stop) = params.split();
    assert_eq!((sampler.temperature, sampler.seed, sampler.logit_bias), (0.3, Some(9), vec![(1, 2.0)]));
    assert_eq!(
        stop,
        StopCriteria { max_tokens: Some(4), stop: vec!["x".into()], stop_token_ids: vec![7], ignore_eos: true }
    );
}

fn weather_tool() -> OptionValue {
    map(&[
        ("type", OptionValue::Str("function".into())),
        ("function", map(&[("name", OptionValue::Str("get_weather".into()))])),
    ])
}

#[test]
fn the_tool_options_become_the_requests_tool_spec() {
    let options = parse(&[
        ("tools", OptionValue::List(vec![weather_tool()])),
        ("tool_choice", OptionValue::Str("required".into())),
        ("parallel_tool_calls", OptionValue::Bool(false)),
    ])
    .unwrap();
    let tools = options.tools.clone().expect("a tool spec");
    assert_eq!(tools.tools.len(), 1);
    assert_eq!(tools.tools[0].name, "get_weather");
    assert_eq!((tools.choice, tools.parallel_calls), (crate::tools::ToolChoice::Required, false));
    let request = options.into_request(Prompt::Chat(Vec::new()));
    assert!(request.tools.is_some(), "into_request drops the tools");
}

#[test]
fn bad_tool_options_name_their_field() {
    let (param, message) = rejected(&[("parallel_tool_calls", OptionValue::Str("yes".into()))]);
    assert_eq!(param, "parallel_tool_calls");
    assert!(message.contains("invalid type: string \"yes\""), "{message}");
    let (param, message) = rejected(&[("tools", OptionValue::Str("get_weather".into()))]);
    assert_eq!(param, "tools");
    assert!(message.contains("must be a list"), "{message}");
    let (param, _) = rejected(&[("tool_choice", OptionValue::Str("required".into()))]);
    assert_eq!(param, "tool_choice");
    // "none" without tools asks for what happens anyway.
    assert_eq!(parse(&[("tool_choice", OptionValue::Str("none".into()))]).unwrap(), RequestOptions::default());
}

#[test]
fn the_c_doors_texts_become_tool_option_values() {
    let [tools, choice] = crate::tools::text_options(
        Some(r#"[{"type": "function", "function": {"name": "get_weather"}}]"#),
        Some("auto"),
    )
    .unwrap();
    assert_eq!(tools, ("tools", OptionValue::List(vec![weather_tool()])));
    assert_eq!(choice, ("tool_choice", OptionValue::Str("auto".into())));
    let error = crate::tools::text_options(Some("[not json"), None).unwrap_err();
    assert_eq!(error.param(), Some("tools"));
    let error = crate::tools::text_options(None, Some("sometimes")).unwrap_err();
    assert_eq!(error.param(), Some("tool_choice"));
}
