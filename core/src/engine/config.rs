//! How an engine is built ([`EngineConfig`]), and the KV cache sizing checked against the
//! model's shape and the machine's memory.

use std::path::PathBuf;
use std::time::Duration;

use super::step_budget::StepBudget;
use crate::error::{Error, Result};
use crate::kv_cache::KvCacheType;
use crate::models::ModelShape;

/// Default of [`EngineConfig::max_batch_tokens`] and [`EngineConfig::max_prefill_tokens`].
const DEFAULT_MAX_BATCH_TOKENS: usize = 2048;

/// Default of [`EngineConfig::target_step_ms`]: at most twice the CPU cost of 8 SmolLM2
/// decodes at one thread (15.7 ms measured), so that at 8 or more such streams the
/// twice-the-decodes rule governs and their latency at most doubles while a prompt is
/// prefilled (issue 21's "p99 <= 2x"); 40 tokens/s per stream below that, still faster than
/// anyone reads. `examples/bench/README.md` "Latency under mixed load" has the measurements.
pub const DEFAULT_TARGET_STEP_MS: f64 = 25.0;

/// Largest accepted token budget: far beyond any context window, so a bigger value is a typo.
const MAX_TOKENS_PER_STEP: usize = 1 << 20;

/// Largest accepted step target (10 s): a step that long is no streaming at all.
const MAX_TARGET_STEP_MS: f64 = 10_000.0;

/// How the engine is built. [`EngineConfig::new`] gives the defaults.
///
/// Every field but `model` is an engine setting the front doors take by name (Python keyword
/// arguments, a JavaScript object in camelCase, the C params struct): the serde derive is the
/// one list of them, read by [`EngineConfig::from_settings`]. A field added here is a setting
/// of every door (each door's tests compare its names with [`EngineConfig::setting_names`]).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Path of a llama-family GGUF file.
    #[serde(skip)]
    pub model: PathBuf,
    /// A `tokenizer.json` to use instead of the GGUF's own tokenizer. Without one, a
    /// `tokenizer.json` next to the model file is used if present, else the GGUF metadata.
    pub tokenizer: Option<PathBuf>,
    /// A sentence-transformers folder for [`Engine::embed`](super::Engine::embed) (none: no
    /// embeddings).
    pub embedding_model: Option<PathBuf>,
    /// Most sequences in the running batch (default 32).
    pub max_running: usize,
    /// Token budget of one step, its decode tokens and prompt chunks together (vLLM's
    /// `max_num_batched_tokens`): the budget itself without a `target_step_ms`, its ceiling
    /// with one (default 2048, at most 2^20). Every running decode is in every step, whatever
    /// the budget; prompts are prefilled in chunks of what the decodes leave (at least one
    /// token, so a prompt always progresses). A step with no running decode takes this many
    /// prompt tokens, target or not (no stream waits on it): a request that arrives meanwhile
    /// waits for that one step, then is admitted ahead of the rest of the prompt. So does a
    /// step whose decodes all got their first token after the oldest prompt still waiting for
    /// its own was submitted: a burst of prompts arriving together is prefilled in as few
    /// steps as this budget allows, beside its own first streams.
    pub max_batch_tokens: usize,
    /// Target duration in milliseconds of a step that carries running decodes and prompt
    /// tokens, which is the inter-token latency of every running stream while a prompt is
    /// prefilled: prompt chunks are sized from the engine thread's measured CPU time per step
    /// so that such a step costs the larger of this target (converted to CPU time at the
    /// machine's recent wall/CPU ratio) and twice the decodes' own step. So the streams'
    /// latency is at most max(target, 2x their latency without the prompt), and a prompt
    /// always gets at least half of a step; one step in 17 of a long prefill runs the decodes
    /// alone to measure them again. It protects the streams that had their first token before
    /// the prompt arrived; a step without such decodes ignores the target (see
    /// `max_batch_tokens`). Default [`DEFAULT_TARGET_STEP_MS`] (25); `None`: a fixed budget of
    /// `max_batch_tokens`. Positive, at most 10000. As a setting, 0 means `None` (a number is
    /// all C and JavaScript can pass).
    #[serde(deserialize_with = "super::settings::zero_is_none")]
    pub target_step_ms: Option<f64>,
    /// Most prompt tokens one step may compute, whatever the budget (default 2048, at most
    /// 2^20).
    pub max_prefill_tokens: usize,
    /// Total KV cache capacity in tokens, shared by all sequences (default 16384): every
    /// position of every layer of a model without sliding-window layers, and of the global
    /// layers of one with them (Gemma 3). Its sliding-window layers have a pool of their own
    /// that keeps only each sequence's window: `max_running` windows plus two blocks each, and
    /// one step's prompt tokens (`min(max_prefill_tokens, max_batch_tokens)`), rounded up to
    /// blocks, and never more blocks than this capacity (see [`sliding_pool_blocks`]).
    pub kv_cache_tokens: usize,
    /// Tokens per KV block (default 16).
    pub block_size: usize,
    /// How K and V are stored: [`KvCacheType::F16`] (default) or [`KvCacheType::Q8_0`] (8 bits
    /// with an f16 scale per 32 values: about 0.53× the bytes of f16 per token at head
    /// dimension 64, so `kv_cache_tokens` costs that much less memory, for a logit error of
    /// the size of the f16 cache's against float64 on SmolLM2, measured by
    /// `core/tests/forward_reference.rs`). The front doors take it as `"f16"` or `"q8_0"`
    /// ([`KvCacheType::parse`]).
    pub kv_cache_type: KvCacheType,
    /// Context window; default and maximum: the model's.
    pub context_length: Option<usize>,
    /// Compute threads; default: the physical cores. At most [`crate::threadpool::MAX_THREADS`];
    /// more, or a count the system cannot start, fails with an error naming `threads`.
    pub threads: Option<usize>,
    /// Most requests submitted and not yet admitted to the running batch (so at most
    /// `max_running + max_queue` are accepted and unfinished before a sequence ends); past it,
    /// submit fails with [`Error::Overloaded`] (default 256). Exact under concurrent submitters.
    /// A sequence preempted back to the queue does not count again: it was admitted once.
    pub max_queue: usize,
    /// A Jinja chat template (HuggingFace dialect) used instead of the model's
    /// `tokenizer.chat_template`; needed for chat requests to a model that ships none.
    pub chat_template: Option<String>,
    /// Puts each request's prompt text in its `queued` log record (default false: prompts are
    /// never logged). See [`crate::telemetry`].
    pub log_prompts: bool,
}

/// The defaults, with no model path (a setting left out keeps its value from here).
impl Default for EngineConfig {
    fn default() -> Self {
        Self::new(PathBuf::new())
    }
}

impl EngineConfig {
    /// Defaults for the model at `model`.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            tokenizer: None,
            embedding_model: None,
            max_running: 32,
            max_batch_tokens: DEFAULT_MAX_BATCH_TOKENS,
            target_step_ms: Some(DEFAULT_TARGET_STEP_MS),
            max_prefill_tokens: DEFAULT_MAX_BATCH_TOKENS,
            kv_cache_tokens: 16384,
            block_size: 16,
            kv_cache_type: KvCacheType::F16,
            context_length: None,
            threads: None,
            max_queue: 256,
            chat_template: None,
            log_prompts: false,
        }
    }

    /// Sets [`Self::target_step_ms`] from a plain number, the way the C, Python, Node and
    /// REST front doors take it: 0 means none (a fixed budget); anything else is validated by
    /// [`Engine::new`].
    pub fn set_target_step_ms(&mut self, ms: f64) {
        self.target_step_ms = (ms != 0.0).then_some(ms);
    }

    /// Most compute threads an engine accepts: four per CPU the process may use. More
    /// threads than that only add contention, and a mistyped huge value would otherwise try to
    /// spawn that many OS threads.
    pub fn max_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get()).saturating_mul(THREADS_PER_CPU)
    }

    /// Checks every setting that can be checked without the model; the error names the
    /// first field out of range. The KV cache size is checked once the model's shape is known
    /// ([`kv_cache_bytes`]).
    pub(crate) fn validate(&self) -> Result<()> {
        let positive = [
            ("max_running", self.max_running),
            ("max_batch_tokens", self.max_batch_tokens),
            ("max_prefill_tokens", self.max_prefill_tokens),
            ("kv_cache_tokens", self.kv_cache_tokens),
            ("block_size", self.block_size),
            ("max_queue", self.max_queue),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(Error::invalid(name, format!("{name} must be at least 1, got 0")));
            }
        }
        for (name, value) in
            [("max_batch_tokens", self.max_batch_tokens), ("max_prefill_tokens", self.max_prefill_tokens)]
        {
            if value > MAX_TOKENS_PER_STEP {
                return Err(Error::invalid(name, format!("must be at most {MAX_TOKENS_PER_STEP}, got {value}")));
            }
        }
        self.validate_target_step()?;
        if self.kv_cache_tokens < self.block_size {
            return Err(Error::invalid("kv_cache_tokens", "must hold at least one block"));
        }
        if self.context_length == Some(0) {
            return Err(Error::invalid("context_length", "context_length must be at least 1, got 0"));
        }
        self.validate_threads()
    }

    fn validate_target_step(&self) -> Result<()> {
        let Some(ms) = self.target_step_ms else { return Ok(()) };
        if !(ms > 0.0 && ms <= MAX_TARGET_STEP_MS) {
            return Err(Error::invalid(
                "target_step_ms",
                format!("must be a number of milliseconds above 0 and at most {MAX_TARGET_STEP_MS} (none for a fixed budget), got {ms}"),
            ));
        }
        Ok(())
    }

    /// The token budget controller this config asks for.
    pub(super) fn step_budget(&self) -> StepBudget {
        match self.target_step_ms {
            Some(ms) => StepBudget::adaptive(self.max_batch_tokens, Duration::from_secs_f64(ms / 1000.0)),
            None => StepBudget::fixed(self.max_batch_tokens),
        }
    }

    fn validate_threads(&self) -> Result<()> {
        let Some(threads) = self.threads else { return Ok(()) };
        let max = Self::max_threads();
        if threads == 0 || threads > max {
            return Err(Error::invalid(
                "threads",
                format!("must be between 1 and {max} (4 per available CPU), got {threads}"),
            ));
        }
        Ok(())
    }
}

/// See [`EngineConfig::max_threads`].
const THREADS_PER_CPU: usize = 4;

/// Blocks of the sliding-window layers' pool (see [`EngineConfig::kv_cache_tokens`]): room
/// for every running sequence's window plus two blocks (the one a window that does not start
/// on a block boundary straddles, and the partial block its next tokens start in), and for one
/// step's prompt tokens, which all the step's prompt chunks together never exceed; capped by
/// the global pool's `num_blocks` (a sequence never holds more sliding blocks than global
/// ones).
pub fn sliding_pool_blocks(config: &EngineConfig, window: usize, num_blocks: usize) -> usize {
    let step_prompt_tokens = config.max_prefill_tokens.min(config.max_batch_tokens);
    let per_sequence = window.div_ceil(config.block_size).saturating_add(2);
    per_sequence
        .saturating_mul(config.max_running)
        .saturating_add(step_prompt_tokens.div_ceil(config.block_size))
        .min(num_blocks)
}

/// Bytes of the KV cache for `num_blocks` blocks of `block_size` tokens in the global pool and
/// `sliding_blocks` in the sliding one, with the model's shape (K and V as `cache_type`, the
/// bytes [`KvStorage::bytes`](crate::kv_cache::KvStorage::bytes) allocates), or an error
/// naming `kv_cache_tokens` when that overflows or exceeds the machine's physical memory: a
/// typo must fail cleanly, not abort in the allocator or get the process killed when the
/// pages are first touched.
pub(super) fn kv_cache_bytes(
    num_blocks: usize,
    sliding_blocks: usize,
    block_size: usize,
    model: &ModelShape,
    cache_type: KvCacheType,
) -> Result<usize> {
    const K_AND_V: usize = 2;
    let too_big = || {
        Error::invalid(
            "kv_cache_tokens",
            format!("{} tokens of KV cache overflow the address space", num_blocks * block_size),
        )
    };
    let global_layers = model.n_layers - model.n_sliding_layers;
    let layer_blocks = global_layers
        .checked_mul(num_blocks)
        .zip(model.n_sliding_layers.checked_mul(sliding_blocks))
        .and_then(|(global, sliding)| global.checked_add(sliding));
    let bytes = [block_size, model.n_kv_heads, K_AND_V, cache_type.row_bytes(model.head_dim)]
        .into_iter()
        .try_fold(layer_blocks.ok_or_else(too_big)?, usize::checked_mul)
        .filter(|&bytes| bytes <= isize::MAX as usize)
        .ok_or_else(too_big)?;
    if let Some(memory) = physical_memory_bytes() {
        if bytes as u64 > memory {
            return Err(Error::invalid(
                "kv_cache_tokens",
                format!(
                    "{} tokens of KV cache need {} MiB, more than the machine's {} MiB of memory",
                    num_blocks * block_size,
                    bytes >> 20,
                    memory >> 20
                ),
            ));
        }
    }
    Ok(bytes)
}

/// Installed RAM, when the platform says.
#[cfg(target_os = "linux")]
fn physical_memory_bytes() -> Option<u64> {
    // SAFETY: sysconf only reads system configuration.
    let (pages, page_size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    let pages = u64::try_from(pages).ok()?;
    let page_size = u64::try_from(page_size).ok()?;
    pages.checked_mul(page_size)
}

#[cfg(not(target_os = "linux"))]
fn physical_memory_bytes() -> Option<u64> {
    None
}
