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

/// The GPT-2 vocabulary (a vocabulary-only GGUF from the fixtures): 50k tokens, no model.
fn gpt2_tokenizer() -> crate::tokenizer::Tokenizer {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/vocab/ggml-vocab-gpt-2.gguf");
    let gguf = crate::gguf::GgufFile::open(&path).expect("the GPT-2 vocabulary fixture opens");
    crate::tokenizer::Tokenizer::from_gguf(&gguf).expect("the GPT-2 vocabulary loads")
}

#[test]
fn the_compiled_constraint_cache_is_bounded_and_keeps_the_recently_used() {
    let tokenizer = gpt2_tokenizer();
    let vocab = tokenizer.vocab_size();
    let compiler = compiler::ConstraintCompiler::with_capacity(2);
    let choice = |word: &str| Constraint::Choices(vec![word.to_string()]);
    for word in ["a", "b", "a", "c", "a"] {
        compiler.start(&choice(word), &tokenizer, vocab).expect("compiles");
    }
    // a, b, c compiled; the second and third `a` were hits; `c` evicted `b` (least recently
    // used), not `a`.
    assert_eq!(compiler.compilations(), 3);
    assert_eq!(compiler.cached(), 2);
    compiler.start(&choice("a"), &tokenizer, vocab).expect("compiles");
    assert_eq!(compiler.compilations(), 3, "`a` stayed cached");
    compiler.start(&choice("b"), &tokenizer, vocab).expect("compiles");
    assert_eq!(compiler.compilations(), 4, "`b` was evicted and compiles again");
    assert_eq!(compiler.cached(), 2);
}

#[test]
fn a_failed_compilation_is_cached_and_reported_to_every_request() {
    let tokenizer = gpt2_tokenizer();
    let compiler = compiler::ConstraintCompiler::default();
    let bad = Constraint::Grammar("start: nowhere".into());
    for _ in 0..2 {
        let err = compiler.start(&bad, &tokenizer, tokenizer.vocab_size()).unwrap_err();
        assert_eq!(err.param(), Some("grammar"), "{err}");
    }
    assert_eq!(compiler.compilations(), 1);
}

mod mask_worker {
    use std::sync::Arc;

    use super::super::masks::{MaskCounters, MaskCounts, MaskWorker, StepStates};
    use super::*;

    fn states(n: usize) -> (crate::tokenizer::Tokenizer, StepStates) {
        let tokenizer = gpt2_tokenizer();
        let compiler = compiler::ConstraintCompiler::default();
        let schema = Constraint::JsonSchema(r#"{"type":"object","properties":{"a":{"type":"integer"}}}"#.into());
        let states = (0..n)
            .map(|i| (i, compiler.start(&schema, &tokenizer, tokenizer.vocab_size()).expect("compiles")))
            .collect();
        (tokenizer, states)
    }

    #[test]
    fn masks_are_prepared_beside_the_forward_and_come_back_in_order() {
        let (_tokenizer, mut states) = states(8);
        let counters = Arc::new(MaskCounters::default());
        let mut worker = MaskWorker::new(Arc::clone(&counters));
        for step in 0..3 {
            let ran = worker.beside(&mut states, || step);
            assert_eq!(ran, step, "the forward's result comes back");
            assert_eq!(states.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
            assert!(states.iter().all(|(_, s)| s.is_mask_prepared()));
        }
        assert_eq!(counters.counts(), MaskCounts { prepared: 24, late: 0 });
        // A step without constrained sequences starts nothing and counts nothing.
        worker.beside(&mut Vec::new(), || ());
        assert_eq!(counters.counts(), MaskCounts { prepared: 24, late: 0 });
    }

    #[test]
    fn a_panicking_forward_still_gets_its_states_back_and_the_next_step_is_not_confused() {
        let (_tokenizer, mut states) = states(3);
        let counters = Arc::new(MaskCounters::default());
        let mut worker = MaskWorker::new(Arc::clone(&counters));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            worker.beside(&mut states, || panic!("forward failed"));
        }));
        assert!(panicked.is_err());
        assert_eq!(states.len(), 3, "the states came back despite the panic");
        // The next step gets its own states back, not a stale answer of the failed one.
        let (_tokenizer2, mut next) = super::mask_worker::states(2);
        worker.beside(&mut next, || ());
        assert_eq!(next.len(), 2);
        assert!(next.iter().all(|(_, s)| s.is_mask_prepared()));
    }
}
