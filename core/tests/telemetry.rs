//! Structured logs: the records of one request share its id and tag, carry the finish reason
//! and counts, never the prompt (unless `log_prompts`), and a panicking sink breaks nothing.
//!
//! One test: the log subscriber is global to the process.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cortexstream::telemetry::{add_sink, remove_sink, LogLevel, LogRecord};
use cortexstream::{Engine, EngineConfig, FinishReason, Request, SamplingParams};
use serde_json::Value;
use tracing::level_filters::LevelFilter;

const PROMPT: &str = "The secret ingredient of the soup is";

fn collect(records: &Arc<Mutex<Vec<LogRecord>>>) -> Vec<LogRecord> {
    std::mem::take(&mut *records.lock().unwrap())
}

fn params(max_tokens: usize) -> SamplingParams {
    SamplingParams { max_tokens: Some(max_tokens), ..SamplingParams::greedy() }
}

/// Counts how often a log field's value was computed.
static FIELD_EVALUATIONS: AtomicUsize = AtomicUsize::new(0);

fn counted_field() -> u64 {
    FIELD_EVALUATIONS.fetch_add(1, Ordering::Relaxed) as u64
}

/// A record built only when someone listens: its field counts its evaluations.
fn log_a_counted_record() {
    tracing::info!(target: "cortexstream::request", value = counted_field(), "probe");
}

#[test]
fn request_records_share_id_and_tag_and_a_panicking_sink_breaks_nothing() {
    // Nobody listening yet: nothing is evaluated (the macros stop at the level check).
    log_a_counted_record();
    assert_eq!(FIELD_EVALUATIONS.load(Ordering::Relaxed), 0);
    assert_eq!(LevelFilter::current(), LevelFilter::OFF);
    let records = Arc::new(Mutex::new(Vec::new()));
    let sink_records = Arc::clone(&records);
    let sink = add_sink(LogLevel::Debug, Arc::new(move |r: &LogRecord| sink_records.lock().unwrap().push(r.clone())))
        .expect("the core's subscriber installs");
    let panicking = add_sink(LogLevel::Trace, Arc::new(|_: &LogRecord| panic!("a broken log sink"))).unwrap();
    log_a_counted_record();
    assert_eq!(FIELD_EVALUATIONS.load(Ordering::Relaxed), 1, "a listened-to record is built");

    let config = EngineConfig { threads: Some(1), kv_cache_tokens: 256, ..EngineConfig::new(common::smollm2_path()) };
    let engine = Engine::new(config.clone()).expect("load");
    let loaded = collect(&records);
    let load = loaded.iter().find(|r| r.message == "model loaded").expect("a model load record");
    assert_eq!(load.target, "cortexstream::model");
    assert_eq!(load.fields["architecture"], "llama");
    assert!(load.fields["bytes"].as_u64().unwrap() > 1_000_000, "{load:?}");
    assert!(load.fields["file"].as_str().unwrap().ends_with(".gguf"));
    assert!(load.fields["load_ms"].is_number());

    let done = engine.generate(Request::new(PROMPT, params(4)).with_tag("req-abc")).expect("generate");
    assert_eq!(done.finish_reason, FinishReason::Length, "the panicking sink did not break generation");
    let logged = collect(&records);
    let messages: Vec<&str> = logged.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(messages, ["queued", "prefill start", "first token", "finished"], "{logged:#?}");
    for record in &logged {
        assert_eq!(record.fields["tag"], "req-abc", "{record:?}");
        assert_eq!(record.fields["request_id"], logged[0].fields["request_id"], "{record:?}");
        assert_eq!(record.target, "cortexstream::request");
        assert!(!format!("{record:?}").contains("secret ingredient"), "no prompt text: {record:?}");
    }
    let finished = &logged[3];
    assert_eq!(finished.level, LogLevel::Info);
    assert_eq!(finished.fields["reason"], "length");
    assert_eq!(finished.fields["completion_tokens"], 4);
    assert_eq!(finished.fields["prompt_tokens"], Value::from(done.usage.prompt_tokens));
    assert_eq!(logged[0].fields["max_tokens"], 4);

    // Rejected at the door: said so, with the field at fault.
    let bad = SamplingParams { temperature: -1.0, ..params(4) };
    assert!(engine.submit(Request::new(PROMPT, bad).with_tag("req-bad")).is_err());
    let rejected = collect(&records);
    assert_eq!(rejected.len(), 1, "{rejected:#?}");
    assert_eq!((rejected[0].message.as_str(), &rejected[0].fields["tag"]), ("rejected", &Value::from("req-bad")));
    assert_eq!(rejected[0].fields["param"], "temperature");

    // Cancelled: the finish record says so.
    let handle = engine.submit(Request::new(PROMPT, params(200)).with_tag("req-cancel")).unwrap();
    handle.cancel();
    assert_eq!(handle.wait().finish_reason, FinishReason::Cancelled);
    let cancelled = collect(&records);
    let last = cancelled.last().expect("records of the cancelled request");
    assert_eq!((last.message.as_str(), &last.fields["reason"]), ("cancelled", &Value::from("cancelled")));
    assert!(cancelled.iter().all(|r| r.fields["tag"] == "req-cancel"));
    drop(engine);

    // Two requests that cannot both fit the KV cache: the newer is preempted, and said so.
    let small = Engine::new(EngineConfig { kv_cache_tokens: 96, max_running: 2, ..config.clone() }).unwrap();
    collect(&records);
    let ignore_eos = || SamplingParams { ignore_eos: true, ..params(60) };
    let handles: Vec<_> = ["first", "second"]
        .iter()
        .map(|tag| small.submit(Request::new(PROMPT, ignore_eos()).with_tag(*tag)).unwrap())
        .collect();
    for handle in handles {
        assert_eq!(handle.wait().finish_reason, FinishReason::Length);
    }
    assert!(small.metrics().preemptions > 0, "the setup must preempt");
    let logged = collect(&records);
    let preempted = logged.iter().find(|r| r.message.starts_with("preempted")).expect("a preempted record");
    assert!(preempted.fields["tag"] == "first" || preempted.fields["tag"] == "second", "{preempted:?}");
    let pressure = logged.iter().find(|r| r.message == "KV cache pressure").expect("a KV pressure record");
    assert_eq!((pressure.level, pressure.target.as_str()), (LogLevel::Warn, "cortexstream::kv"));
    assert!(pressure.fields["preempted"].as_u64().unwrap() >= 1);
    drop(small);

    // Only an engine configured to log prompts puts the prompt in the queued record.
    let engine = Engine::new(EngineConfig { log_prompts: true, ..config }).unwrap();
    collect(&records);
    engine.generate(Request::new(PROMPT, params(1))).unwrap();
    let logged = collect(&records);
    assert_eq!(logged[0].fields["prompt"], PROMPT, "{logged:#?}");

    // Above the sink's level nothing arrives; with no sink at all nothing is built.
    remove_sink(sink);
    remove_sink(panicking);
    let info_only = Arc::new(Mutex::new(Vec::new()));
    let info_records = Arc::clone(&info_only);
    let info_sink =
        add_sink(LogLevel::Info, Arc::new(move |r: &LogRecord| info_records.lock().unwrap().push(r.clone()))).unwrap();
    engine.generate(Request::new(PROMPT, params(1))).unwrap();
    let messages: Vec<String> = collect(&info_only).into_iter().map(|r| r.message).collect();
    assert_eq!(messages, ["queued", "finished"]);
    remove_sink(info_sink);
    engine.generate(Request::new(PROMPT, params(1))).unwrap();
    assert!(collect(&records).is_empty() && collect(&info_only).is_empty());
    // With the subscriber installed but no sink left, logging is off again at the level check.
    assert_eq!(LevelFilter::current(), LevelFilter::OFF);
    let evaluated = FIELD_EVALUATIONS.load(Ordering::Relaxed);
    log_a_counted_record();
    assert_eq!(FIELD_EVALUATIONS.load(Ordering::Relaxed), evaluated);
}
