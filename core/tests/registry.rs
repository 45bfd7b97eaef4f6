//! The model registry with the real models: SmolLM2 under two names with different settings,
//! plus MiniLM. Keep-alive and LRU run on a hand-advanced clock (no sleeping), except one test
//! of the reaper thread on the real clock.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cortexstream::registry::{Clock, KeepAlive, ModelSpec, Registry, RegistryError, RegistryOptions};
use cortexstream::{EngineConfig, Error, FinishReason, Request, SamplingParams};

/// A clock tests move forward by hand.
#[derive(Default)]
struct ManualClock {
    start: Option<Instant>,
    offset: Mutex<Duration>,
}

impl ManualClock {
    fn new() -> Arc<Self> {
        Arc::new(Self { start: Some(Instant::now()), offset: Mutex::default() })
    }

    fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start.unwrap() + *self.offset.lock().unwrap()
    }
}

const KV_TOKENS: usize = 1024;

fn smollm2(context_length: Option<usize>) -> EngineConfig {
    let mut config = EngineConfig::new(common::smollm2_path());
    config.kv_cache_tokens = KV_TOKENS;
    config.max_running = 4;
    config.threads = Some(1);
    config.context_length = context_length;
    config
}

/// `small` (context 256) and `large` (the model's full context), both SmolLM2, plus `minilm`.
fn registry(options: RegistryOptions, clock: Arc<ManualClock>) -> Registry {
    let registry = Registry::with_clock(options, clock);
    registry.register(ModelSpec::generation("small", smollm2(Some(256)))).unwrap();
    registry.register(ModelSpec::generation("large", smollm2(None))).unwrap();
    let mut minilm = ModelSpec::embedding("minilm", common::minilm_dir());
    if let cortexstream::registry::ModelSource::Embedding { threads, .. } = &mut minilm.source {
        *threads = Some(1);
    }
    registry.register(minilm).unwrap();
    registry
}

fn greedy(prompt: &str, max_tokens: usize) -> Request {
    let mut params = SamplingParams::greedy();
    params.max_tokens = Some(max_tokens);
    params.ignore_eos = true;
    Request::new(prompt, params)
}

fn loaded_names(registry: &Registry) -> Vec<String> {
    registry.loaded().into_iter().map(|m| m.name).collect()
}

#[test]
fn interleaved_requests_reach_the_model_they_name() {
    let registry = registry(RegistryOptions::default(), ManualClock::new());
    let small = registry.get("small", None).unwrap();
    let large = registry.get("large", None).unwrap();
    let minilm = registry.get("minilm", None).unwrap();
    // Each name is its own engine with its own settings.
    assert_eq!(small.engine().unwrap().model_info().context_length, 256);
    assert_eq!(large.engine().unwrap().model_info().context_length, KV_TOKENS);
    assert!(!Arc::ptr_eq(small.engine().unwrap(), large.engine().unwrap()));
    assert!(minilm.engine().is_none());

    let prompts = ["The capital of France is", "Once upon a time", "1, 2, 3, 4,"];
    let mut handles = Vec::new();
    for prompt in prompts {
        handles.push(small.engine().unwrap().submit(greedy(prompt, 8)).unwrap());
        handles.push(large.engine().unwrap().submit(greedy(prompt, 8)).unwrap());
        assert_eq!(minilm.embed(&[prompt]).unwrap().vectors[0].len(), 384);
    }
    let texts: Vec<String> = handles.into_iter().map(|h| h.wait().text).collect();
    // Same weights, greedy: both names answer each prompt alike, and the prompts differ.
    for pair in texts.chunks(2) {
        assert_eq!(pair[0], pair[1]);
        assert!(!pair[0].is_empty());
    }
    assert_ne!(texts[0], texts[2]);
    assert_eq!(loaded_names(&registry), ["large", "minilm", "small"]);
    // A generation model sized by its weights and its KV cache.
    let listed = registry.loaded();
    let small_size = listed.iter().find(|m| m.name == "small").unwrap().memory_bytes;
    let weights = std::fs::metadata(common::smollm2_path()).unwrap().len();
    assert!(small_size > weights, "{small_size} <= {weights}");
    assert!(listed.iter().all(|m| m.active_requests == 1));
}

#[test]
fn unknown_model_names_it_and_lists_the_known_ones() {
    let registry = registry(RegistryOptions::default(), ManualClock::new());
    let error = registry.get("gpt-4", None).unwrap_err();
    assert!(matches!(&error, RegistryError::UnknownModel { name, .. } if name == "gpt-4"));
    let message = error.to_string();
    assert!(message.contains("`gpt-4`") && message.contains("large, minilm, small"), "{message}");
    let core: Error = error.into();
    assert!(matches!(&core, Error::ModelNotFound(m) if m.contains("gpt-4") && m.contains("small")), "{core}");
    assert!(matches!(registry.unload("gpt-4"), Err(RegistryError::UnknownModel { .. })));
    let duplicate = registry.register(ModelSpec::generation("small", smollm2(None))).unwrap_err();
    assert!(matches!(duplicate, RegistryError::AlreadyRegistered(name) if name == "small"));
    assert!(registry.register(ModelSpec::generation(" ", smollm2(None))).is_err());
}

#[test]
fn keep_alive_counts_from_the_end_of_the_last_request() {
    let clock = ManualClock::new();
    let registry = registry(RegistryOptions::default(), Arc::clone(&clock));
    let lease = registry.get("small", None).unwrap();
    // In use: never expires, however long the request runs.
    clock.advance(Duration::from_secs(3600));
    assert!(registry.reap().is_empty());
    drop(lease);
    // Default keep-alive: 5 minutes from the end of the request.
    clock.advance(Duration::from_secs(299));
    assert_eq!(loaded_names(&registry), ["small"]);
    let expires = registry.loaded()[0].expires_at.expect("a deadline");
    let left = expires.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    assert!(left <= Duration::from_secs(1), "{left:?} left");
    clock.advance(Duration::from_secs(2));
    assert!(loaded_names(&registry).is_empty(), "expired on access");

    // A request's keep_alive replaces the model's: 10 s this time.
    registry.load("small", Some(KeepAlive::For(Duration::from_secs(10)))).unwrap();
    clock.advance(Duration::from_secs(9));
    assert!(registry.reap().is_empty());
    clock.advance(Duration::from_secs(1));
    assert_eq!(registry.reap(), ["small"]);

    // Any access expires the others (no reaper thread here); the model asked for, expired
    // but still in memory, is reused.
    registry.load("small", None).unwrap();
    clock.advance(Duration::from_secs(301));
    let small = registry.get("small", None).unwrap();
    let engine = Arc::clone(small.engine().unwrap());
    drop(small);
    clock.advance(Duration::from_secs(301));
    registry.load("minilm", None).unwrap();
    assert_eq!(registry.memory_bytes(), registry.get("minilm", None).unwrap().memory_bytes(), "small expired");
    assert_eq!(Arc::strong_count(&engine), 1, "the registry let go of small");
    drop(engine);
    registry.unload("minilm").unwrap();

    // Negative (forever): never unloaded for being idle.
    registry.load("large", Some(KeepAlive::parse("-1").unwrap())).unwrap();
    clock.advance(Duration::from_secs(365 * 24 * 3600));
    assert_eq!(loaded_names(&registry), ["large"]);
    assert_eq!(registry.loaded()[0].expires_at, None);
}

#[test]
fn keep_alive_zero_unloads_when_the_last_request_ends() {
    let registry = registry(RegistryOptions::default(), ManualClock::new());
    let first = registry.get("small", None).unwrap();
    let second = registry.get("small", Some(KeepAlive::parse("0").unwrap())).unwrap();
    let engine = Arc::downgrade(first.engine().unwrap());
    drop(second);
    assert_eq!(loaded_names(&registry), ["small"], "still in use by the first request");
    let completion = first.engine().unwrap().generate(greedy("Hello", 4)).unwrap();
    assert_eq!(completion.finish_reason, FinishReason::Length);
    drop(first);
    // Unloaded by the lease's end itself (`memory_bytes` does not expire anything).
    assert_eq!(registry.memory_bytes(), 0);
    assert!(loaded_names(&registry).is_empty());
    assert!(engine.upgrade().is_none(), "the engine was freed");
}

#[test]
fn a_budget_for_one_model_unloads_the_least_recently_used_idle_one() {
    // One SmolLM2 engine (weights + a 1024-token KV cache) fits; two do not.
    let weights = std::fs::metadata(common::smollm2_path()).unwrap().len();
    let options = RegistryOptions { memory_budget_bytes: Some(weights * 3 / 2), ..RegistryOptions::default() };
    let registry = registry(options, ManualClock::new());
    registry.load("small", None).unwrap();
    registry.load("large", None).unwrap();
    assert_eq!(loaded_names(&registry), ["large"], "small was idle and least recently used");
    registry.load("small", None).unwrap();
    assert_eq!(loaded_names(&registry), ["small"]);

    // A model in use is never unloaded for room: both stay, over budget, until one is idle.
    let busy = registry.get("small", None).unwrap();
    let handle = busy.engine().unwrap().submit(greedy("The weather today", 16)).unwrap();
    registry.load("large", None).unwrap();
    assert_eq!(loaded_names(&registry), ["large", "small"]);
    assert_eq!(handle.wait().finish_reason, FinishReason::Length, "the busy model's request finished");
    drop(busy);
    registry.load("minilm", None).unwrap();
    let left = loaded_names(&registry);
    assert!(left.contains(&"minilm".to_string()) && left.len() <= 2, "{left:?}");
    assert!(!left.contains(&"large".to_string()) || !left.contains(&"small".to_string()), "{left:?}");
}

#[test]
fn a_request_racing_an_unload_is_served() {
    let registry = registry(RegistryOptions::default(), ManualClock::new());
    let lease = registry.get("small", None).unwrap();
    let handle = lease.engine().unwrap().submit(greedy("Tell me a story about a dragon", 24)).unwrap();
    assert!(registry.unload("small").unwrap());
    assert!(loaded_names(&registry).is_empty());
    let completion = handle.wait();
    assert_eq!(completion.finish_reason, FinishReason::Length);
    assert_eq!(completion.usage.completion_tokens, 24);
    // The lease still works after the unload; the next get loads a fresh engine.
    assert!(lease.engine().unwrap().generate(greedy("Hi", 2)).is_ok());
    let fresh = registry.get("small", None).unwrap();
    assert!(!Arc::ptr_eq(fresh.engine().unwrap(), lease.engine().unwrap()));
    drop(lease);
    assert_eq!(loaded_names(&registry), ["small"], "the old lease does not touch the new load");
    assert!(!registry.unload("large").unwrap(), "not loaded");
}

#[test]
fn the_reaper_thread_unloads_expired_models_without_being_asked() {
    let options =
        RegistryOptions { default_keep_alive: KeepAlive::For(Duration::from_millis(50)), ..Default::default() };
    let registry = Registry::new(options);
    registry.register(ModelSpec::embedding("minilm", common::minilm_dir())).unwrap();
    registry.load("minilm", None).unwrap();
    // `memory_bytes` reads without expiring, so only the reaper can bring it to 0.
    let give_up = Instant::now() + Duration::from_secs(30);
    while registry.memory_bytes() > 0 {
        assert!(Instant::now() < give_up, "the reaper never unloaded the model");
        std::thread::sleep(Duration::from_millis(10));
    }
    registry.close();
    assert!(matches!(registry.get("minilm", None), Err(RegistryError::Closed)));
}

#[test]
fn unregister_forgets_the_name_and_serves_the_requests_in_flight() {
    let registry = registry(RegistryOptions::default(), ManualClock::new());
    let lease = registry.get("small", None).unwrap();
    let handle = lease.engine().unwrap().submit(greedy("Tell me a story about a dragon", 12)).unwrap();
    assert!(registry.unregister("small"));
    assert!(loaded_names(&registry).is_empty());
    assert!(matches!(registry.get("small", None), Err(RegistryError::UnknownModel { .. })));
    let names: Vec<String> = registry.registered().into_iter().map(|r| r.spec.name).collect();
    assert_eq!(names, ["large", "minilm"]);
    // The request that held a lease finishes on the forgotten model.
    assert_eq!(handle.wait().usage.completion_tokens, 12);
    drop(lease);
    assert!(loaded_names(&registry).is_empty(), "the ended lease did not bring it back");
    assert!(!registry.unregister("small"), "already forgotten");
    // The name is free again.
    registry.register(ModelSpec::generation("small", smollm2(Some(128)))).unwrap();
    assert_eq!(registry.get("small", None).unwrap().engine().unwrap().model_info().context_length, 128);
}

#[test]
fn reading_the_loaded_models_neither_restarts_keep_alive_nor_counts_as_use() {
    let clock = ManualClock::new();
    let options = RegistryOptions { default_keep_alive: KeepAlive::For(Duration::from_secs(10)), ..Default::default() };
    let registry = registry(options, Arc::clone(&clock));
    registry.load("small", None).unwrap();
    clock.advance(Duration::from_secs(6));
    let models = registry.loaded_models();
    assert_eq!(models.len(), 1);
    assert_eq!(models[0].0, "small");
    assert!(models[0].1.engine().unwrap().metrics().steps == 0);
    drop(models);
    clock.advance(Duration::from_secs(6));
    assert!(loaded_names(&registry).is_empty(), "expired 10 s after its load, not after the read");
}

#[test]
fn shutdown_ends_the_requests_that_close_lets_finish() {
    let registry = registry(RegistryOptions::default(), ManualClock::new());
    let lease = registry.get("small", None).unwrap();
    // Unloaded while leased: only the lease holds it now, and shutdown still reaches it.
    assert!(registry.unload("small").unwrap());
    let handle = lease.engine().unwrap().submit(greedy("Tell me a long story about a dragon", 200)).unwrap();
    registry.shutdown();
    let completion = handle.wait();
    assert_eq!(completion.finish_reason, FinishReason::Cancelled);
    assert!(completion.usage.completion_tokens < 200);
    assert!(matches!(registry.get("large", None), Err(RegistryError::Closed)));
}

#[test]
fn model_info_reports_template_parameters_and_quantization_from_the_gguf() {
    let registry = registry(RegistryOptions::default(), ManualClock::new());
    let lease = registry.get("small", None).unwrap();
    let info = lease.engine().unwrap().model_info();
    assert_eq!(info.quantization.as_deref(), Some("Q4_1"));
    // SmolLM2-135M: about 135 million parameters.
    assert!((120_000_000..150_000_000).contains(&info.parameter_count), "{}", info.parameter_count);
    assert!(info.chat_template.as_deref().is_some_and(|t| t.contains("<|im_start|>")), "{:?}", info.chat_template);
    assert_eq!(cortexstream::gguf::file_type_name(15), Some("Q4_K_M"));
    assert_eq!(cortexstream::gguf::file_type_name(999), None);
}

#[test]
fn metrics_count_every_loaded_model_embedding_ones_included() {
    use cortexstream::registry::{EmbeddingMetrics, ModelMetrics};
    let registry = registry(RegistryOptions::default(), ManualClock::new());
    assert_eq!(registry.names(), ["large", "minilm", "small"]);
    assert!(registry.metrics().is_empty(), "nothing is loaded yet");
    let minilm = registry.get("minilm", None).unwrap();
    let tokens = minilm.embed(&["one text", "and another one"]).unwrap().prompt_tokens
        + minilm.embed(&["a third"]).unwrap().prompt_tokens;
    let small = registry.get("small", None).unwrap();
    small.engine().unwrap().generate(greedy("Once upon a time", 3)).unwrap();
    let metrics = registry.metrics();
    let names: Vec<&str> = metrics.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["minilm", "small"]);
    assert_eq!(
        metrics[0].1,
        ModelMetrics::Embedding(EmbeddingMetrics { embedding_requests: 2, embedding_tokens_total: tokens as u64 })
    );
    let ModelMetrics::Generation(snapshot) = &metrics[1].1 else { panic!("small is a generation model") };
    assert_eq!((snapshot.requests_finished, snapshot.generated_tokens_total), (1, 3));
    // The Prometheus field names of an embedding model, as a REST server renders them.
    let json = serde_json::to_value(&metrics[0].1).unwrap();
    assert_eq!(json, serde_json::json!({"embedding_requests": 2, "embedding_tokens_total": tokens}));
    // One model's, by name: loaded, registered only, unknown.
    assert_eq!(registry.model_metrics("minilm").unwrap(), Some(metrics[0].1.clone()));
    assert_eq!(registry.model_metrics("large").unwrap(), None);
    assert!(matches!(registry.model_metrics("gpt-4"), Err(RegistryError::UnknownModel { .. })));
}

#[test]
fn describe_reads_the_gguf_without_loading_and_agrees_with_the_loaded_engine() {
    let registry = registry(RegistryOptions::default(), ManualClock::new());
    let before = registry.describe("small").unwrap().expect("a generation model");
    assert!(registry.loaded().is_empty(), "describing loaded nothing");
    assert_eq!(before.context_length, 256);
    assert_eq!(before.architecture, "llama");
    assert_eq!(before.quantization.as_deref(), Some("Q4_1"));
    assert!(before.chat_template.as_deref().is_some_and(|t| t.contains("<|im_start|>")));
    assert!(before.parameter_count > 100_000_000);
    assert_eq!(registry.describe("large").unwrap().unwrap().context_length, KV_TOKENS);
    assert_eq!(registry.describe("minilm").unwrap(), None);
    assert!(matches!(registry.describe("gpt-4"), Err(Error::ModelNotFound(_))));
    let lease = registry.get("small", None).unwrap();
    let info = lease.engine().unwrap().model_info();
    assert_eq!(before, cortexstream::ModelDescription::from(info));
    assert_eq!(registry.describe("small").unwrap(), Some(before));
}
