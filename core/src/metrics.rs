//! Engine counters and histograms. The engine thread updates them; any thread can take a
//! [`MetricsSnapshot`] (the REST server renders it as Prometheus text).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// A cumulative histogram, in Prometheus' shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Histogram {
    /// `(upper bound, cumulative count of observations <= bound)`, ascending bounds.
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    fn with_bounds(bounds: &[f64]) -> Self {
        Self { buckets: bounds.iter().map(|&b| (b, 0)).collect(), sum: 0.0, count: 0 }
    }

    fn observe(&mut self, value: f64) {
        for (bound, count) in &mut self.buckets {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

const BATCH_SIZE_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0];
const TTFT_BOUNDS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const PER_TOKEN_BOUNDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// A point-in-time copy of every metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    pub requests_submitted: u64,
    pub requests_finished: u64,
    pub requests_cancelled: u64,
    pub requests_failed: u64,
    pub requests_rejected: u64,
    /// Requests waiting to be scheduled.
    pub queue_depth: usize,
    /// Sequences in the running batch.
    pub running: usize,
    /// Prompt tokens of accepted requests (a request with `n` choices is `n` requests).
    ///
    /// Each prompt token of a request is counted once more when its K/V first comes to be:
    /// served from the prefix cache (`prefix_cache_hit_tokens`) or computed
    /// (`prefill_tokens_total`). So `prefix_cache_hit_tokens + prefill_tokens_total ==
    /// prompt_tokens_total` once every accepted request has consumed its prompt; less while
    /// prompts wait or are being computed, or for requests cancelled before their prompt
    /// was consumed. Preemption never adds to either (see `recomputed_tokens_total`).
    pub prompt_tokens_total: u64,
    /// Prompt tokens computed by the model for the first time (excludes prefix-cache hits
    /// and recomputation after a preemption).
    pub prefill_tokens_total: u64,
    /// Prompt tokens whose K/V came from the prefix cache instead of being computed: each
    /// prompt position of a request counts at most once, when the request is admitted (not
    /// when a prompt that does not fit yet is offered its cache and goes back to wait).
    pub prefix_cache_hit_tokens: u64,
    /// Tokens (prompt or generated) computed again because a preemption took their K/V
    /// away. Not counted in `prefill_tokens_total`.
    pub recomputed_tokens_total: u64,
    /// Gauge: tokens the last planned step could compute, its decodes plus the prompt tokens
    /// the step budget granted beside them (at most `max_prefill_tokens`, and the decodes
    /// and prompt tokens together at most `max_batch_tokens`). With `target_step_ms` it follows
    /// the measured step times.
    pub step_token_budget: usize,
    pub generated_tokens_total: u64,
    pub steps: u64,
    /// Steps that failed (an error, or a panic in the engine thread or a thread-pool worker);
    /// the requests running in them ended with `FinishReason::Error`.
    pub step_failures: u64,
    pub preemptions: u64,
    pub kv_blocks_total: usize,
    /// Blocks not used by any sequence (free or holding reusable cached prefixes).
    pub kv_blocks_free: usize,
    /// Blocks of the sliding-window layers' pool (0 for models without sliding layers, whose
    /// every layer uses the pool above).
    pub kv_sliding_blocks_total: usize,
    /// Blocks of the sliding-window pool not used by any sequence (as `kv_blocks_free`).
    pub kv_sliding_blocks_free: usize,
    pub embedding_requests: u64,
    /// Tokens (prefill + decode rows) per forward step.
    pub batch_size: Histogram,
    pub time_to_first_token_seconds: Histogram,
    pub per_token_seconds: Histogram,
}

/// Live metrics, shared between the engine thread and readers.
#[derive(Debug)]
pub struct Metrics {
    pub requests_submitted: AtomicU64,
    pub requests_finished: AtomicU64,
    pub requests_cancelled: AtomicU64,
    pub requests_failed: AtomicU64,
    pub requests_rejected: AtomicU64,
    pub queue_depth: AtomicUsize,
    pub running: AtomicUsize,
    pub prompt_tokens_total: AtomicU64,
    pub prefill_tokens_total: AtomicU64,
    pub prefix_cache_hit_tokens: AtomicU64,
    pub recomputed_tokens_total: AtomicU64,
    pub step_token_budget: AtomicUsize,
    pub generated_tokens_total: AtomicU64,
    pub steps: AtomicU64,
    pub step_failures: AtomicU64,
    pub preemptions: AtomicU64,
    pub kv_blocks_total: AtomicUsize,
    pub kv_blocks_free: AtomicUsize,
    pub kv_sliding_blocks_total: AtomicUsize,
    pub kv_sliding_blocks_free: AtomicUsize,
    pub embedding_requests: AtomicU64,
    histograms: Mutex<Histograms>,
}

#[derive(Debug)]
struct Histograms {
    batch_size: Histogram,
    ttft: Histogram,
    per_token: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests_submitted: AtomicU64::new(0),
            requests_finished: AtomicU64::new(0),
            requests_cancelled: AtomicU64::new(0),
            requests_failed: AtomicU64::new(0),
            requests_rejected: AtomicU64::new(0),
            queue_depth: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            prompt_tokens_total: AtomicU64::new(0),
            prefill_tokens_total: AtomicU64::new(0),
            prefix_cache_hit_tokens: AtomicU64::new(0),
            recomputed_tokens_total: AtomicU64::new(0),
            step_token_budget: AtomicUsize::new(0),
            generated_tokens_total: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            step_failures: AtomicU64::new(0),
            preemptions: AtomicU64::new(0),
            kv_blocks_total: AtomicUsize::new(0),
            kv_blocks_free: AtomicUsize::new(0),
            kv_sliding_blocks_total: AtomicUsize::new(0),
            kv_sliding_blocks_free: AtomicUsize::new(0),
            embedding_requests: AtomicU64::new(0),
            histograms: Mutex::new(Histograms {
                batch_size: Histogram::with_bounds(BATCH_SIZE_BOUNDS),
                ttft: Histogram::with_bounds(TTFT_BOUNDS),
                per_token: Histogram::with_bounds(PER_TOKEN_BOUNDS),
            }),
        }
    }
}

/// Adds `n` to a counter (relaxed: metrics need no ordering with other memory).
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    pub fn observe_batch_size(&self, tokens: usize) {
        self.lock().batch_size.observe(tokens as f64);
    }

    pub fn observe_ttft(&self, seconds: f64) {
        self.lock().ttft.observe(seconds);
    }

    pub fn observe_per_token(&self, seconds: f64) {
        self.lock().per_token.observe(seconds);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Histograms> {
        self.histograms.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let load64 = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let load = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        let h = self.lock();
        MetricsSnapshot {
            requests_submitted: load64(&self.requests_submitted),
            requests_finished: load64(&self.requests_finished),
            requests_cancelled: load64(&self.requests_cancelled),
            requests_failed: load64(&self.requests_failed),
            requests_rejected: load64(&self.requests_rejected),
            queue_depth: load(&self.queue_depth),
            running: load(&self.running),
            prompt_tokens_total: load64(&self.prompt_tokens_total),
            prefill_tokens_total: load64(&self.prefill_tokens_total),
            prefix_cache_hit_tokens: load64(&self.prefix_cache_hit_tokens),
            recomputed_tokens_total: load64(&self.recomputed_tokens_total),
            step_token_budget: load(&self.step_token_budget),
            generated_tokens_total: load64(&self.generated_tokens_total),
            steps: load64(&self.steps),
            step_failures: load64(&self.step_failures),
            preemptions: load64(&self.preemptions),
            kv_blocks_total: load(&self.kv_blocks_total),
            kv_blocks_free: load(&self.kv_blocks_free),
            kv_sliding_blocks_total: load(&self.kv_sliding_blocks_total),
            kv_sliding_blocks_free: load(&self.kv_sliding_blocks_free),
            embedding_requests: load64(&self.embedding_requests),
            batch_size: h.batch_size.clone(),
            time_to_first_token_seconds: h.ttft.clone(),
            per_token_seconds: h.per_token.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::with_bounds(&[1.0, 10.0]);
        for v in [0.5, 5.0, 50.0] {
            h.observe(v);
        }
        assert_eq!(h.buckets, vec![(1.0, 1), (10.0, 2)]);
        assert_eq!(h.count, 3);
        assert_eq!(h.sum, 55.5);
    }
}
