//! A panic inside a compute kernel, injected through the test-only pool fault hook
//! (`Engine::inject_pool_panic_for_testing`), with the real SmolLM2 and MiniLM models: the
//! requests of the failed step end with an internal error, the failure is counted, an
//! embedding call fails with `Error::Internal`, and the engine keeps giving exact results.
//! Also: a thread count the pool cannot start is a clean error naming `threads`.
//! Run with `--test-threads=1`: the tests share one engine and read its metrics.

mod common;

use common::greedy;

use std::sync::OnceLock;

use cortexstream::{Engine, EngineConfig, Error, FinishReason, Request};

/// Two threads, so the pool has a worker and the injected panic happens on it.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = EngineConfig::new(common::smollm2_path());
        config.embedding_model = Some(common::minilm_dir());
        config.threads = Some(2);
        Engine::new(config).expect("the default model loads")
    })
}

fn reference_greedy_ids(n: usize) -> Vec<u32> {
    let ids = common::reference()["raw_completion"]["greedy_token_ids"].as_array().expect("greedy ids").clone();
    ids.iter().take(n).map(|v| v.as_u64().expect("id") as u32).collect()
}

#[test]
fn a_worker_panic_fails_the_step_with_an_internal_error_and_the_engine_keeps_serving() {
    let engine = engine();
    let before = engine.metrics();

    engine.inject_pool_panic_for_testing();
    let failed = engine.generate(Request::new("The quick brown fox", greedy(12))).expect("submit");
    assert_eq!(failed.finish_reason, FinishReason::Error, "{failed:?}");
    let error = failed.error.as_deref().unwrap_or_default();
    assert!(error.starts_with("internal error: a thread-pool task panicked"), "{error}");
    assert!(failed.token_ids.is_empty(), "no token may come out of the failed step: {failed:?}");

    let after = engine.metrics();
    assert_eq!(after.step_failures - before.step_failures, 1);
    assert_eq!(after.requests_failed - before.requests_failed, 1);
    assert_eq!(after.kv_blocks_free, after.kv_blocks_total, "the failed request's blocks are free");

    let clear = common::clear_greedy_tokens();
    let next = engine.generate(Request::new("The quick brown fox", greedy(clear))).expect("submit");
    assert_eq!(next.finish_reason, FinishReason::Length);
    assert_eq!(next.token_ids, reference_greedy_ids(clear), "the next request gets the exact greedy tokens");
    assert_eq!(engine.metrics().step_failures, after.step_failures);
}

#[test]
fn a_worker_panic_during_embedding_is_an_internal_error_and_the_next_call_is_exact() {
    let engine = engine();
    let texts = ["The quick brown fox", "jumps over the lazy dog"];
    let expected = engine.embed(&texts).expect("embed");

    engine.inject_pool_panic_for_testing();
    match engine.embed(&texts) {
        Err(Error::Internal(message)) => assert!(message.contains("a thread-pool task panicked"), "{message}"),
        other => panic!("expected an internal error, got {other:?}"),
    }
    let again = engine.embed(&texts).expect("embed after the fault");
    assert_eq!(again.vectors, expected.vectors, "bit-identical after the fault");
}

#[test]
fn a_thread_count_no_machine_can_start_is_an_error_naming_threads() {
    for threads in [cortexstream::threadpool::MAX_THREADS + 1, usize::MAX] {
        let mut config = EngineConfig::new(common::smollm2_path());
        config.threads = Some(threads);
        match Engine::new(config) {
            Err(error @ Error::InvalidRequest { .. }) => {
                assert_eq!(error.param(), Some("threads"), "{error}");
                assert!(error.to_string().contains(&threads.to_string()), "{error}");
            }
            other => panic!("{threads} threads: expected an error naming threads, got {other:?}"),
        }
    }
}
