use super::*;

#[test]
fn kinds_parse_and_unknown_kinds_name_the_field() {
    assert_eq!(Constraint::from_kind("regex", "a+").unwrap(), Constraint::Regex("a+".into()));
    assert_eq!(Constraint::from_kind("json_object", "").unwrap(), Constraint::json_object());
    assert_eq!(
        Constraint::from_kind("choices", r#"["yes","no"]"#).unwrap(),
        Constraint::Choices(vec!["yes".into(), "no".into()])
    );
    let err = Constraint::from_kind("choices", "yes,no").unwrap_err();
    assert_eq!(err.param(), Some("choices"));
    let err = Constraint::from_kind("xml", "<a/>").unwrap_err();
    assert_eq!(err.param(), Some("constraint"));
}

#[test]
fn empty_constraints_are_rejected_naming_their_field() {
    let cases = [
        (Constraint::JsonSchema(" ".into()), "json_schema"),
        (Constraint::Regex(String::new()), "regex"),
        (Constraint::Grammar(String::new()), "grammar"),
        (Constraint::Choices(vec![]), "choices"),
        (Constraint::Choices(vec!["a".into(), String::new()]), "choices"),
    ];
    for (constraint, field) in cases {
        assert_eq!(constraint.validate().unwrap_err().param(), Some(field), "{constraint:?}");
    }
}

#[test]
fn openai_response_formats_map_to_constraints() {
    use serde_json::json;
    let parse = |v: serde_json::Value| Constraint::from_response_format(&v);
    assert_eq!(parse(json!({"type": "text"})).unwrap(), None);
    assert_eq!(parse(json!({"type": "json_object"})).unwrap(), Some(Constraint::json_object()));
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    let spec = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}});
    assert_eq!(parse(spec).unwrap(), Some(Constraint::JsonSchema(schema.to_string())));
    for bad in [json!({}), json!({"type": "yaml"}), json!({"type": "json_schema", "json_schema": {"name": "x"}})] {
        assert_eq!(parse(bad.clone()).unwrap_err().param(), Some("response_format"), "{bad}");
    }
}
