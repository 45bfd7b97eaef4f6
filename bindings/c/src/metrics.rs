//! `cs_engine_metrics`: the engine's counters and gauges as a plain C struct.

use std::mem::size_of;

use cortexstream::registry::ModelMetrics;
use cortexstream::MetricsSnapshot;

use crate::args::write_sized;
use crate::engine::{cs_engine, engine_ref};
use crate::status::{cs_status, guard};

/// A point-in-time copy of the engine's metrics. The caller sets
/// `struct_size = sizeof(cs_metrics)` before calling `cs_engine_metrics`; fields are only
/// ever appended, so a caller built against an older header gets the fields it knows.
///
/// Counters (`*_total`, `requests_*`, `steps`, ...) only grow over the engine's life; gauges
/// (`queue_depth`, `running`, `kv_blocks_free`) are the state after the engine's last
/// scheduling decision. Histograms appear as their count and sum (the REST server renders
/// the buckets for Prometheus).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct cs_metrics {
    /// `sizeof(cs_metrics)` as the caller was compiled; only that many bytes are written.
    pub struct_size: usize,
    /// Requests accepted by a `cs_engine_submit_*` call.
    pub requests_submitted: u64,
    /// Requests that ended, for any reason (their FINISHED event was produced).
    pub requests_finished: u64,
    /// Requests that ended with CS_FINISH_CANCELLED.
    pub requests_cancelled: u64,
    /// Requests that ended with CS_FINISH_ERROR.
    pub requests_failed: u64,
    /// Submissions refused by `cs_engine_submit_*` (an invalid request, CS_OVERLOADED).
    pub requests_rejected: u64,
    /// Gauge: requests waiting to be scheduled.
    pub queue_depth: u64,
    /// Gauge: sequences in the running batch.
    pub running: u64,
    /// Prompt tokens of accepted requests. Once every accepted request has consumed its
    /// prompt, `prefix_cache_hit_tokens + prefill_tokens_total == prompt_tokens_total`.
    pub prompt_tokens_total: u64,
    /// Prompt tokens computed by the model for the first time (excludes prefix-cache hits and
    /// recomputation after a preemption).
    pub prefill_tokens_total: u64,
    /// Prompt tokens whose KV came from the prefix cache (each prompt token of a request at
    /// most once).
    pub prefix_cache_hit_tokens: u64,
    /// Tokens sampled for requests.
    pub generated_tokens_total: u64,
    /// Forward steps the engine completed (one batch through the model each).
    pub steps: u64,
    /// Steps that failed; the requests running in them ended with CS_FINISH_ERROR.
    pub step_failures: u64,
    /// Sequences preempted (their KV blocks taken back) to make room for others.
    pub preemptions: u64,
    /// Gauge: KV cache blocks in total.
    pub kv_blocks_total: u64,
    /// Gauge: KV cache blocks not used by any sequence (free, or holding reusable cached
    /// prefixes). Equals `kv_blocks_total` once the engine is idle.
    pub kv_blocks_free: u64,
    /// Embedding calls served.
    pub embedding_requests: u64,
    /// Histogram count: forward steps observed.
    pub batch_size_count: u64,
    /// Histogram sum: tokens (prefill + decode rows) over all observed steps.
    pub batch_size_sum: f64,
    /// Histogram count: requests that produced a first token.
    pub time_to_first_token_count: u64,
    /// Histogram sum: seconds from submit to first token, over those requests.
    pub time_to_first_token_seconds_sum: f64,
    /// Histogram count: tokens timed after the first.
    pub per_token_count: u64,
    /// Histogram sum: seconds between consecutive tokens, over those tokens.
    pub per_token_seconds_sum: f64,
    /// Gauge: blocks of the sliding-window layers' own KV pool (Gemma 3); 0 for a model
    /// without sliding layers, whose every layer uses the pool of `kv_blocks_total`.
    pub kv_sliding_blocks_total: u64,
    /// Gauge: sliding-window pool blocks not used by any sequence. Equals
    /// `kv_sliding_blocks_total` once the engine is idle.
    pub kv_sliding_blocks_free: u64,
    /// Tokens computed again because a preemption took their KV away (not counted in
    /// `prefill_tokens_total`).
    pub recomputed_tokens_total: u64,
    /// Gauge: tokens the last planned step could compute (its decodes plus the prompt tokens
    /// the step budget granted beside them).
    pub step_token_budget: u64,
    /// Tokens embedded by the successful calls of an embedding model registered on its own
    /// (`cs_registry_register_embedding`, read with `cs_registry_metrics`, where
    /// `embedding_requests` counts its calls and every other field is 0). 0 for a generation
    /// engine, whose own embedding calls count in `embedding_requests` only.
    pub embedding_tokens_total: u64,
}

/// A count that fits the C field (usize is never wider than 64 bits on supported targets).
fn gauge(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

impl From<&MetricsSnapshot> for cs_metrics {
    fn from(m: &MetricsSnapshot) -> Self {
        Self {
            struct_size: size_of::<cs_metrics>(),
            requests_submitted: m.requests_submitted,
            requests_finished: m.requests_finished,
            requests_cancelled: m.requests_cancelled,
            requests_failed: m.requests_failed,
            requests_rejected: m.requests_rejected,
            queue_depth: gauge(m.queue_depth),
            running: gauge(m.running),
            prompt_tokens_total: m.prompt_tokens_total,
            prefill_tokens_total: m.prefill_tokens_total,
            prefix_cache_hit_tokens: m.prefix_cache_hit_tokens,
            generated_tokens_total: m.generated_tokens_total,
            steps: m.steps,
            step_failures: m.step_failures,
            preemptions: m.preemptions,
            kv_blocks_total: gauge(m.kv_blocks_total),
            kv_blocks_free: gauge(m.kv_blocks_free),
            embedding_requests: m.embedding_requests,
            batch_size_count: m.batch_size.count,
            batch_size_sum: m.batch_size.sum,
            time_to_first_token_count: m.time_to_first_token_seconds.count,
            time_to_first_token_seconds_sum: m.time_to_first_token_seconds.sum,
            per_token_count: m.per_token_seconds.count,
            per_token_seconds_sum: m.per_token_seconds.sum,
            kv_sliding_blocks_total: gauge(m.kv_sliding_blocks_total),
            kv_sliding_blocks_free: gauge(m.kv_sliding_blocks_free),
            recomputed_tokens_total: m.recomputed_tokens_total,
            step_token_budget: gauge(m.step_token_budget),
            embedding_tokens_total: 0,
        }
    }
}

impl From<&ModelMetrics> for cs_metrics {
    fn from(metrics: &ModelMetrics) -> Self {
        match metrics {
            ModelMetrics::Generation(snapshot) => Self::from(snapshot),
            ModelMetrics::Embedding(counts) => Self {
                struct_size: size_of::<cs_metrics>(),
                embedding_requests: counts.embedding_requests,
                embedding_tokens_total: counts.embedding_tokens_total,
                ..Self::default()
            },
        }
    }
}

/// Copies the engine's current metrics into `*out_metrics` (set `out_metrics->struct_size`
/// first, to `sizeof(cs_metrics)`). Only `struct_size` bytes are written. Errors:
/// CS_INVALID_ARGUMENT for a NULL argument or a `struct_size` smaller than a `size_t` or
/// larger than this library's struct (a header newer than the library).
///
/// Each field is read atomically, the struct as a whole is not: counters read one after
/// another may be a step apart while the engine runs. On an idle engine it is exact.
/// Thread-safety: any thread, also from inside an event callback (the engine publishes the
/// gauges before it delivers a FINISHED event, so a callback sees the request's blocks free).
#[no_mangle]
pub unsafe extern "C" fn cs_engine_metrics(engine: *const cs_engine, out_metrics: *mut cs_metrics) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract.
        let engine = unsafe { engine_ref(engine)? };
        let value = cs_metrics::from(&engine.core().metrics());
        // SAFETY: forwarded caller contract.
        unsafe { write_sized(out_metrics, value, "out_metrics") }
    })
}
