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
