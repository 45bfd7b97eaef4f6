//! The [`Engine`]: owns the model and the step-loop thread. Callers submit requests from any
//! thread and read events from a [`RequestHandle`] (or a callback); embeddings run directly on
//! the caller's thread, outside the generation scheduler.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::chat::ChatTemplate;
use crate::constraint::compiler::ConstraintCompiler;
use crate::constraint::state::ConstraintState;
use crate::detokenize::{Step, StreamingText};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::kv_cache::{BlockAllocator, KvStorage};
use crate::metrics::{add, Metrics, MetricsSnapshot};
use crate::models::bert::BertEmbedder;
use crate::models::SeqChunk;
use crate::models::{GenerationModel, ModelShape};
use crate::request::{ChatMessage, Event, FinishReason, Prompt, Request, Timings, TokenLogprobs, Usage};
use crate::sampling::Sampler;
use crate::scheduler::{ScheduledChunk, Scheduler, SchedulerConfig, SlidingPool};
use crate::step_budget::StepBudget;
use crate::sequence::{panic_message, Delivery, EventCallback, EventSink, FinalEvent, QueueSlot, Sequence};
use crate::threadpool::{default_thread_count, ThreadPool};
use crate::tokenizer::Tokenizer;

/// Default of [`EngineConfig::max_batch_tokens`] and [`EngineConfig::max_prefill_tokens`].
const DEFAULT_MAX_BATCH_TOKENS: usize = 2048;

/// Default of [`EngineConfig::target_step_ms`].
pub const DEFAULT_TARGET_STEP_MS: f64 = 50.0;

/// Largest accepted token budget: far beyond any context window, so a bigger value is a typo.
const MAX_TOKENS_PER_STEP: usize = 1 << 20;

/// Largest accepted step target (10 s): a step that long is no streaming at all.
const MAX_TARGET_STEP_MS: f64 = 10_000.0;


/// How the engine is built. [`EngineConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Path of a llama-family GGUF file.
    pub model: PathBuf,
    /// A `tokenizer.json` to use instead of the GGUF's own tokenizer. Without one, a
    /// `tokenizer.json` next to the model file is used if present, else the GGUF metadata.
    pub tokenizer: Option<PathBuf>,
    /// A sentence-transformers folder for [`Engine::embed`] (none: no embeddings).
    pub embedding_model: Option<PathBuf>,
    /// Most sequences in the running batch (default 32).
    pub max_running: usize,
    /// Token budget of one step, its decode tokens and prompt chunks together (vLLM's
    /// `max_num_batched_tokens`): the budget itself without a `target_step_ms`, its ceiling
    /// with one (default 2048, at most 2^20). Every running decode is in every step, whatever
    /// the budget; prompts are prefilled in chunks of what the decodes leave (at least one
    /// token, so a prompt always progresses).
    pub max_batch_tokens: usize,
    /// Target duration of one step in milliseconds, which is the inter-token latency of every
    /// running stream: prompt chunks are sized from the measured step times so that a step
    /// carrying one takes about this long, or, when the running decodes alone take more than
    /// half of it, twice as long as they do (a prompt always gets half of a step, and the
    /// streams' latency at most doubles while it is prefilled). Default
    /// [`DEFAULT_TARGET_STEP_MS`]; `None`: a fixed budget of `max_batch_tokens`. Positive, at
    /// most 10000.
    pub target_step_ms: Option<f64>,
    /// Most prompt tokens one step may compute, whatever the budget (default 2048, at most
    /// 2^20).
    pub max_prefill_tokens: usize,
    /// Total KV cache capacity in tokens, shared by all sequences (default 16384): every
    /// position of every layer of a model without sliding-window layers, and of the global
    /// layers of one with them (Gemma 3). Its sliding-window layers have a pool of their own
    /// that keeps only each sequence's window: `max_running` sequences of
    /// `window + min(max_prefill_tokens, max_batch_tokens)` positions plus one block each,
    /// rounded up to blocks, and never more blocks than this capacity (see
    /// [`sliding_pool_blocks`]).
    pub kv_cache_tokens: usize,
    /// Tokens per KV block (default 16).
    pub block_size: usize,
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
            context_length: None,
            threads: None,
            max_queue: 256,
            chat_template: None,
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
    fn validate(&self) -> Result<()> {
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
                return Err(Error::invalid(name, "must be at least 1"));
            }
        }
        for (name, value) in [("max_batch_tokens", self.max_batch_tokens), ("max_prefill_tokens", self.max_prefill_tokens)]
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
            return Err(Error::invalid("context_length", "must be at least 1"));
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
    fn step_budget(&self) -> StepBudget {
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
/// for every running sequence's window and one prefill chunk, plus the block a window that
/// does not start on a block boundary straddles, capped by the global pool's `num_blocks`
/// (a sequence never holds more sliding blocks than global ones).
pub fn sliding_pool_blocks(config: &EngineConfig, window: usize, num_blocks: usize) -> usize {
    let chunk = config.max_prefill_tokens.min(config.max_batch_tokens);
    let per_sequence = window.saturating_add(chunk).div_ceil(config.block_size).saturating_add(1);
    per_sequence.saturating_mul(config.max_running).min(num_blocks)
}

/// Bytes of the KV cache for `num_blocks` blocks of `block_size` tokens in the global pool and
/// `sliding_blocks` in the sliding one, with the model's shape (K and V, f16), or an error
/// naming `kv_cache_tokens` when that overflows or exceeds the machine's physical memory: a
/// typo must fail cleanly, not abort in the allocator or get the process killed when the
/// pages are first touched.
fn kv_cache_bytes(num_blocks: usize, sliding_blocks: usize, block_size: usize, model: &ModelShape) -> Result<usize> {
    const K_AND_V: usize = 2;
    let element = std::mem::size_of::<u16>();
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
    let bytes = [block_size, model.n_kv_heads, model.head_dim, K_AND_V, element]
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

/// What is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub name: String,
    pub path: PathBuf,
    pub architecture: String,
    /// The effective context window (the model's, capped by the config and the KV cache).
    pub context_length: usize,
    pub vocab_size: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub embedding: Option<EmbeddingInfo>,
}

/// The embedding model, when one is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingInfo {
    pub name: String,
    pub path: PathBuf,
    pub dim: usize,
    pub max_tokens: usize,
}

/// The result of [`Engine::embed`].
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One L2-normalised vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
}

/// A finished request, gathered from its events.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    /// Every sampled token, including an end-of-generation token that ended the request.
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
    /// One entry per token when log-probabilities were requested, else empty.
    pub logprobs: Vec<TokenLogprobs>,
    pub error: Option<String>,
}

/// Gathers a request's events into a [`Completion`], for consumers that also look at each
/// event as it arrives (streaming bindings).
#[derive(Debug, Default)]
pub struct CompletionBuilder {
    text: String,
    token_ids: Vec<u32>,
    logprobs: Vec<TokenLogprobs>,
}

impl CompletionBuilder {
    /// Adds one event; returns the completion when `event` is the `Finished` one.
    pub fn push(&mut self, event: Event) -> Option<Completion> {
        match event {
            Event::Token { id, text, logprobs } => {
                self.token_ids.push(id);
                self.text.push_str(&text);
                self.logprobs.extend(logprobs);
                None
            }
            Event::Finished { reason, usage, timings, error } => Some(Completion {
                text: std::mem::take(&mut self.text),
                token_ids: std::mem::take(&mut self.token_ids),
                finish_reason: reason,
                usage,
                timings,
                logprobs: std::mem::take(&mut self.logprobs),
                error,
            }),
        }
    }
}

/// Why a receive returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// `recv_timeout` waited the full time.
    Timeout,
    /// `try_recv` found nothing yet.
    Empty,
    /// The `Finished` event was already delivered.
    Finished,
}

/// Cancels a request from any thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Canceller(Arc<AtomicBool>);

impl Canceller {
    /// Idempotent; the request ends with [`FinishReason::Cancelled`] within one step.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The caller's end of one request: a stream of [`Event`]s ending with `Finished`.
///
/// Dropping it before the `Finished` event cancels the request.
#[derive(Debug)]
pub struct RequestHandle {
    id: u64,
    prompt_tokens: usize,
    events: Receiver<Event>,
    cancel: Arc<AtomicBool>,
    finished: AtomicBool,
}

impl RequestHandle {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// Blocks for the next event; `None` once `Finished` has been delivered.
    pub fn recv(&self) -> Option<Event> {
        if self.finished.load(Ordering::Acquire) {
            return None;
        }
        Some(self.observe(self.events.recv().ok()))
    }

    /// Waits at most `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, RecvError> {
        if self.finished.load(Ordering::Acquire) {
            return Err(RecvError::Finished);
        }
        match self.events.recv_timeout(timeout) {
            Ok(event) => Ok(self.observe(Some(event))),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(RecvError::Timeout),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Ok(self.observe(None)),
        }
    }

    /// Returns an event if one is ready.
    pub fn try_recv(&self) -> Result<Event, RecvError> {
        if self.finished.load(Ordering::Acquire) {
            return Err(RecvError::Finished);
        }
        match self.events.try_recv() {
            Ok(event) => Ok(self.observe(Some(event))),
            Err(TryRecvError::Empty) => Err(RecvError::Empty),
            Err(TryRecvError::Disconnected) => Ok(self.observe(None)),
        }
    }

    /// Cancels the request (idempotent, thread-safe).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
    }

    /// A cancel handle that can move to another thread.
    pub fn canceller(&self) -> Canceller {
        Canceller(Arc::clone(&self.cancel))
    }

    /// Drains the remaining events into a [`Completion`].
    pub fn wait(self) -> Completion {
        let mut builder = CompletionBuilder::default();
        while let Some(event) = self.recv() {
            if let Some(completion) = builder.push(event) {
                return completion;
            }
        }
        unreachable!("recv yields a Finished event before it yields None")
    }

    /// Tracks the end of the stream. A channel closed without `Finished` means the engine
    /// went away (shut down mid-request): report that as a cancellation.
    fn observe(&self, event: Option<Event>) -> Event {
        let event = event.unwrap_or(Event::Finished {
            reason: FinishReason::Cancelled,
            usage: Usage { prompt_tokens: self.prompt_tokens, ..Usage::default() },
            timings: Timings::default(),
            error: Some("the engine shut down".into()),
        });
        if matches!(event, Event::Finished { .. }) {
            self.finished.store(true, Ordering::Release);
        }
        event
    }
}

impl Iterator for RequestHandle {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        self.recv()
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        if !self.finished.load(Ordering::Acquire) {
            self.cancel();
        }
    }
}

enum Command {
    Submit(Box<Sequence>),
    Shutdown,
}

/// State shared by the engine's owner and its thread.
struct Shared {
    tokenizer: Tokenizer,
    chat_template: ChatTemplate,
    embedder: Option<BertEmbedder>,
    info: ModelInfo,
    metrics: Arc<Metrics>,
    closed: AtomicBool,
    next_id: AtomicU64,
    /// Places taken in the queue (see [`QueueSlot`]): requests submitted and not yet admitted
    /// to the running batch. Only submit increments it; a slot's drop decrements it.
    queued: Arc<AtomicUsize>,
    /// The compute pool (also owned by the models), kept for the test-only fault hook.
    pool: Arc<ThreadPool>,
    max_queue: usize,
    kv_capacity_tokens: usize,
    /// Compiles and caches the requests' output constraints.
    constraints: ConstraintCompiler,
}

/// A loaded model serving requests on its own thread. `Send + Sync`: share it with `Arc`.
pub struct Engine {
    shared: Arc<Shared>,
    commands: Sender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("model", &self.shared.info.name).finish()
    }
}

impl Engine {
    /// Loads the model (and the embedding model, if configured) and starts the engine thread.
    pub fn new(config: EngineConfig) -> Result<Self> {
        config.validate()?;
        let threads = config.threads.unwrap_or_else(default_thread_count);
        let pool = Arc::new(ThreadPool::new(threads).map_err(|e| Error::invalid("threads", e.to_string()))?);

        let gguf = GgufFile::open(&config.model)?;
        let model = GenerationModel::load(&gguf, Arc::clone(&pool))?;
        // An explicit tokenizer.json wins, then one next to the model, then the GGUF metadata.
        let beside_model = config.model.with_file_name("tokenizer.json");
        let tokenizer_json = config.tokenizer.clone().or_else(|| beside_model.is_file().then_some(beside_model));
        let tokenizer = match &tokenizer_json {
            Some(path) => Tokenizer::from_tokenizer_json(path, Some(&gguf))?,
            None => Tokenizer::from_gguf(&gguf)?,
        };
        // A configured template wins over the model's; a model with neither refuses chat
        // requests (a guessed format would be silently wrong) but still serves text prompts.
        let chat_template = match &config.chat_template {
            Some(source) => ChatTemplate::from_option(source, &tokenizer)?,
            None => ChatTemplate::from_gguf(&gguf, &tokenizer)?.unwrap_or_else(ChatTemplate::missing),
        };
        let embedder =
            config.embedding_model.as_deref().map(|dir| BertEmbedder::load(dir, Arc::clone(&pool))).transpose()?;

        let mc = &model.shape();
        let num_blocks = config.kv_cache_tokens / config.block_size;
        let sliding_blocks = mc.sliding_window.map(|window| sliding_pool_blocks(&config, window, num_blocks));
        kv_cache_bytes(num_blocks, sliding_blocks.unwrap_or(0), config.block_size, mc)?;
        let kv_capacity_tokens = num_blocks * config.block_size;
        let context_length =
            config.context_length.unwrap_or(mc.context_length).min(mc.context_length).min(kv_capacity_tokens);
        let info = ModelInfo {
            name: mc.name.clone(),
            path: config.model.clone(),
            architecture: gguf.require_str("general.architecture").unwrap_or("llama").to_string(),
            context_length,
            vocab_size: mc.vocab_size,
            bos_token_id: tokenizer.bos_token_id(),
            eos_token_id: tokenizer.eos_token_id(),
            embedding: embedder.as_ref().map(|e| EmbeddingInfo {
                name: e.name().to_string(),
                path: config.embedding_model.clone().unwrap_or_default(),
                dim: e.dim(),
                max_tokens: e.max_tokens(),
            }),
        };
        drop(gguf);

        let metrics = Arc::new(Metrics::default());
        metrics.kv_blocks_total.store(num_blocks, Ordering::Relaxed);
        metrics.kv_blocks_free.store(num_blocks, Ordering::Relaxed);
        metrics.kv_sliding_blocks_total.store(sliding_blocks.unwrap_or(0), Ordering::Relaxed);
        metrics.kv_sliding_blocks_free.store(sliding_blocks.unwrap_or(0), Ordering::Relaxed);
        let queued = Arc::new(AtomicUsize::new(0));
        let kv = match sliding_blocks {
            Some(sliding) => model.new_kv_storage_with_sliding_pool(num_blocks, sliding, config.block_size),
            None => model.new_kv_storage(num_blocks, config.block_size),
        };
        let mut scheduler = Scheduler::new(
            SchedulerConfig {
                max_running: config.max_running,
                max_prefill_tokens: config.max_prefill_tokens,
            },
            BlockAllocator::new(num_blocks, config.block_size),
        );
        if let (Some(window), Some(blocks)) = (mc.sliding_window, sliding_blocks) {
            let allocator = BlockAllocator::new(blocks, config.block_size);
            scheduler = scheduler.with_sliding_pool(SlidingPool { allocator, window });
        }
        let (commands, command_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            tokenizer,
            chat_template,
            embedder,
            info,
            metrics,
            closed: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            queued,
            max_queue: config.max_queue,
            kv_capacity_tokens,
            pool,
            constraints: ConstraintCompiler::default(),
        });
        let worker = StepLoop {
            shared: Arc::clone(&shared),
            model,
            kv,
            scheduler,
            budget: config.step_budget(),
            commands: command_rx,
            logits: Vec::new(),
            plan: Vec::new(),
            chunks: Vec::new(),
            finished: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("cortexstream-engine".into())
            .spawn(move || worker.run())
            .map_err(|e| Error::Internal(format!("cannot start the engine thread: {e}")))?;
        Ok(Self { shared, commands, thread: Mutex::new(Some(thread)) })
    }

    /// Validates and queues a request; read its events from the returned handle.
    pub fn submit(&self, request: Request) -> Result<RequestHandle> {
        self.submit_inner(request, None)
    }

    /// Like [`submit`](Self::submit), but every event also goes to `callback`, called on the
    /// engine thread (keep it short). Returning `false` cancels the request; a panicking callback
    /// ends it with [`FinishReason::Error`]. The handle receives only the `Finished` event.
    pub fn submit_with_callback(&self, request: Request, callback: EventCallback) -> Result<RequestHandle> {
        self.submit_inner(request, Some(callback))
    }

    /// Runs a request to the end and returns its completion.
    pub fn generate(&self, request: Request) -> Result<Completion> {
        Ok(self.submit(request)?.wait())
    }

    /// Embeds texts with the embedding model, on the calling thread.
    pub fn embed(&self, texts: &[&str]) -> Result<Embeddings> {
        self.ensure_open()?;
        let embedder = self.shared.embedder.as_ref().ok_or(Error::NoEmbeddingModel)?;
        add(&self.shared.metrics.embedding_requests, 1);
        // A panic in the embedder (on this thread or a pool worker) is a bug, reported as an
        // error like every other failure instead of unwinding into the caller (or a binding).
        let embedded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| embedder.embed_counting_tokens(texts)))
            .map_err(|panic| Error::Internal(panic_message(&panic)))?;
        let (vectors, prompt_tokens) = embedded?;
        Ok(Embeddings { vectors, prompt_tokens })
    }

    pub fn tokenize(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.shared.tokenizer.encode(text, add_special_tokens)
    }

    pub fn detokenize(&self, ids: &[u32]) -> Result<String> {
        self.shared.tokenizer.decode(ids, false)
    }

    /// Renders chat messages with the model's template.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.shared.chat_template.render(messages, add_generation_prompt)
    }

    pub fn model_info(&self) -> &ModelInfo {
        &self.shared.info
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.shared.tokenizer
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// Test-only fault hook: the next thread-pool job (of the next step, or of an `embed`
    /// call, whichever computes first) panics in one worker-run task, as a bug in a kernel
    /// would. Exists so the tests of every binding can check that such a panic fails the
    /// affected requests or call with an internal error and that the engine keeps serving.
    #[doc(hidden)]
    pub fn inject_pool_panic_for_testing(&self) {
        self.shared.pool.panic_in_next_job_for_testing();
    }

    /// Cancels everything in flight and queued (they finish with `Cancelled`), stops and joins
    /// the engine thread. Idempotent; afterwards new work fails with [`Error::EngineClosed`].
    pub fn shutdown(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let _ = self.commands.send(Command::Shutdown);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
            // The thread owned the weights and the KV cache; without this glibc keeps their
            // pages resident after `close()` (see `memory`).
            crate::memory::release_free_memory();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    fn ensure_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::EngineClosed)
        } else {
            Ok(())
        }
    }

    fn submit_inner(&self, request: Request, callback: Option<EventCallback>) -> Result<RequestHandle> {
        self.ensure_open()?;
        let shared = &*self.shared;
        let metrics = &shared.metrics;
        let result = self.prepare(request, callback);
        let (mut sequence, handle) = match result {
            Ok(ok) => ok,
            Err(e) => {
                add(&metrics.requests_rejected, 1);
                return Err(e);
            }
        };
        let prompt_len = sequence.prompt_len as u64;
        let Some(slot) = QueueSlot::try_take(&shared.queued, shared.max_queue) else {
            add(&metrics.requests_rejected, 1);
            return Err(Error::Overloaded(format!("the request queue is full (max_queue = {})", shared.max_queue)));
        };
        sequence.queue_slot = Some(slot);
        // A failed send drops the sequence, and with it the slot.
        if self.commands.send(Command::Submit(Box::new(sequence))).is_err() {
            return Err(Error::EngineClosed);
        }
        add(&metrics.requests_submitted, 1);
        add(&metrics.prompt_tokens_total, prompt_len);
        Ok(handle)
    }

    /// How many distinct constraints this engine has compiled (the rest came from its cache).
    #[doc(hidden)]
    pub fn constraint_compilations(&self) -> usize {
        self.shared.constraints.compilations()
    }

    /// Tokenizes and validates a request (on the caller's thread, so errors return at once and
    /// the engine thread never tokenizes).
    fn prepare(&self, request: Request, callback: Option<EventCallback>) -> Result<(Sequence, RequestHandle)> {
        let shared = &*self.shared;
        let tokenizer = &shared.tokenizer;
        let vocab_size = shared.info.vocab_size;
        request.params.validate(vocab_size)?;
        let tokens = match &request.prompt {
            Prompt::Text(text) => {
                if text.is_empty() {
                    return Err(Error::invalid("prompt", "the prompt must not be empty"));
                }
                tokenizer.encode(text, true)?
            }
            Prompt::Tokens(ids) => {
                if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab_size) {
                    return Err(Error::invalid(
                        "prompt",
                        format!("token id {bad} is outside the vocabulary (size {vocab_size})"),
                    ));
                }
                ids.clone()
            }
            Prompt::Chat(messages) => tokenizer.encode(&shared.chat_template.render(messages, true)?, false)?,
        };
        if tokens.is_empty() {
            return Err(Error::invalid("prompt", "the prompt must contain at least one token"));
        }
        let context = shared.info.context_length;
        if tokens.len() >= context {
            return Err(Error::ContextLengthExceeded {
                param: if matches!(request.prompt, Prompt::Chat(_)) { "messages" } else { "prompt" },
                message: format!(
                    "the prompt has {} tokens but the context window is {context} tokens (at least one must remain for the completion)",
                    tokens.len()
                ),
                prompt_tokens: tokens.len(),
                max_tokens: request.params.max_tokens.unwrap_or(0),
                context_length: context,
            });
        }
        debug_assert!(context <= shared.kv_capacity_tokens);
        // A completion that would overflow the context is clamped to it and ends with
        // FinishReason::Length, as llama.cpp does (documented in the README).
        let max_new_tokens = request.params.max_tokens.unwrap_or(usize::MAX).min(context - tokens.len());

        // Compiled here, on the caller's thread, so a bad schema fails the submit itself.
        let constraint = request
            .params
            .constraint
            .as_ref()
            .map(|c| shared.constraints.start(c, tokenizer, vocab_size))
            .transpose()?;
        let mut stop_ids: HashSet<u32> = request.params.stop_token_ids.iter().copied().collect();
        if !request.params.ignore_eos {
            stop_ids.extend(tokenizer.end_of_generation_ids().iter().copied());
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::unbounded();
        let sink = match callback {
            Some(cb) => EventSink::Callback(cb, tx),
            None => EventSink::Channel(tx),
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let prompt_len = tokens.len();
        let sequence = Sequence {
            id,
            priority: request.priority,
            arrival: id,
            prompt_len,
            tokens,
            computed: 0,
            blocks: Default::default(),
            sliding_blocks: Default::default(),
            queue_slot: None,
            registered_blocks: 0,
            last_block_hash: None,
            max_new_tokens,
            text: StreamingText::new(request.params.stop.clone()),
            sampler: Sampler::new(request.params),
            constraint,
            stop_ids,
            sink,
            cancel: Arc::clone(&cancel),
            cached_prompt_tokens: 0,
            submitted: Instant::now(),
            first_scheduled: None,
            first_token: None,
            last_token: None,
            scheduled_this_step: false,
        };
        let handle =
            RequestHandle { id, prompt_tokens: prompt_len, events: rx, cancel, finished: AtomicBool::new(false) };
        Ok((sequence, handle))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The engine thread: owns the model, the KV storage and the scheduler.
struct StepLoop {
    shared: Arc<Shared>,
    model: GenerationModel,
    kv: KvStorage,
    scheduler: Scheduler,
    /// Tokens per step, adapted to the measured step times.
    budget: StepBudget,
    commands: Receiver<Command>,
    /// Logits of the last step, reused across steps.
    logits: Vec<f32>,
    /// The step's plan, reused across steps.
    plan: Vec<ScheduledChunk>,
    /// The step's model input, kept empty between steps only for its allocation (see
    /// [`reuse_allocation`]).
    chunks: Vec<SeqChunk<'static>>,
    /// Sequences that finished in the step: id, reason, error.
    finished: Vec<(u64, FinishReason, Option<String>)>,
}

/// An empty vector of another lifetime that keeps `buffer`'s allocation. `SeqChunk<'a>` has
/// the same layout for every `'a`, so the in-place collect specialisation of `Vec` reuses the
/// memory (no element ever exists, so nothing is converted).
fn reuse_allocation<'a, 'b>(mut buffer: Vec<SeqChunk<'a>>) -> Vec<SeqChunk<'b>> {
    buffer.clear();
    buffer.into_iter().map(|_| unreachable!("the buffer is empty")).collect()
}

impl StepLoop {
    fn run(mut self) {
        loop {
            // Sleep when idle; otherwise take whatever arrived and keep stepping.
            if self.scheduler.is_idle() {
                match self.commands.recv() {
                    Ok(command) => {
                        if !self.handle(command) {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            let mut keep_running = true;
            while let Ok(command) = self.commands.try_recv() {
                keep_running &= self.handle(command);
            }
            if !keep_running {
                break;
            }
            self.reap_cancelled();
            // A panic inside a step must not take the engine down: fail the affected requests
            // and keep serving the others.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step()));
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.fail_step(&e.to_string()),
                Err(panic) => self.fail_step(&format!("internal error: {}", panic_message(&panic))),
            }
            self.publish_gauges();
        }
        self.cancel_everything();
    }

    /// Returns false on shutdown.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Submit(seq) => {
                self.scheduler.enqueue(*seq);
                true
            }
            Command::Shutdown => false,
        }
    }

    fn step(&mut self) -> Result<()> {
        let mut plan = std::mem::take(&mut self.plan);
        let result = self.run_plan(&mut plan);
        self.plan = plan;
        result
    }

    fn run_plan(&mut self, plan: &mut Vec<ScheduledChunk>) -> Result<()> {
        let started = Instant::now();
        let report = self.scheduler.schedule_into(plan, &self.budget);
        let metrics = Arc::clone(&self.shared.metrics);
        add(&metrics.preemptions, report.preempted as u64);
        add(&metrics.prefix_cache_hit_tokens, report.prefix_hit_tokens as u64);
        self.retire(report.out_of_space.into_iter().map(|seq| (seq, FinishReason::Length, None)));
        if plan.is_empty() {
            return Ok(());
        }

        // The grammar states of the sequences sampling this step leave their sequences for the
        // forward, so their masks can be computed beside it (see `forward_and_masks`).
        let mut constrained = take_sampling_constraints(&mut self.scheduler.running, plan);
        let running = &self.scheduler.running;
        let mut chunks = reuse_allocation(std::mem::take(&mut self.chunks));
        chunks.extend(plan.iter().map(|c| {
            let seq = &running[c.index];
            SeqChunk {
                tokens: &seq.tokens[c.start..c.start + c.len],
                start_pos: c.start,
                block_table: &seq.blocks,
                sliding_block_table: &seq.sliding_blocks,
                want_logits: c.want_logits,
            }
        }));
        let batch_tokens: usize = plan.iter().map(|c| c.len).sum();
        // Everything but one-token decode chunks counts as prefill (including recomputation
        // after preemption).
        let is_decode = |c: &ScheduledChunk| c.len == 1 && c.start >= running[c.index].prompt_len;
        let prefill_tokens: usize = plan.iter().filter(|c| !is_decode(c)).map(|c| c.len).sum();
        let outcome = forward_and_masks(&self.model, &chunks, &mut self.kv, &mut self.logits, &mut constrained);
        self.chunks = reuse_allocation(chunks);
        for (index, state) in constrained {
            self.scheduler.running[index].constraint = Some(state);
        }
        outcome?;

        add(&metrics.steps, 1);
        add(&metrics.prefill_tokens_total, prefill_tokens as u64);
        metrics.observe_batch_size(batch_tokens);
        self.scheduler.mark_computed(plan);

        let vocab = self.model.vocab_size();
        self.finished.clear();
        // Logit rows come in plan order, one per chunk that wanted logits.
        for (row, c) in plan.iter().filter(|c| c.want_logits).enumerate() {
            let logits = &mut self.logits[row * vocab..(row + 1) * vocab];
            let seq = &mut self.scheduler.running[c.index];
            if let Some((reason, error)) = advance(seq, logits, &self.shared.tokenizer, &metrics) {
                self.finished.push((seq.id, reason, error));
            }
        }
        if !self.finished.is_empty() {
            let finished = std::mem::take(&mut self.finished);
            let removed = self.scheduler.remove_where(|s| finished.iter().any(|f| f.0 == s.id));
            self.retire(removed.into_iter().filter_map(|seq| {
                let (_, reason, error) = finished.iter().find(|f| f.0 == seq.id).cloned()?;
                Some((seq, reason, error))
            }));
            self.finished = finished;
        }
        // The whole step, sampling and streaming included: what a running stream waits.
        self.budget.observe(batch_tokens - prefill_tokens, prefill_tokens, started.elapsed());
        Ok(())
    }

    /// Ends cancelled requests (flag set by the caller, or the consumer went away).
    fn reap_cancelled(&mut self) {
        let removed = self.scheduler.remove_where(Sequence::is_cancelled);
        self.retire(removed.into_iter().map(|seq| (seq, FinishReason::Cancelled, None)));
    }

    /// Counts a failed step and fails the requests it was computing.
    fn fail_step(&mut self, message: &str) {
        add(&self.shared.metrics.step_failures, 1);
        self.fail_running(message);
    }

    /// Fails every running request after an error inside a step.
    fn fail_running(&mut self, message: &str) {
        let ids: HashSet<u64> = self.scheduler.running.iter().map(|s| s.id).collect();
        let removed = self.scheduler.remove_where(|s| ids.contains(&s.id));
        self.retire(removed.into_iter().map(|seq| (seq, FinishReason::Error, Some(message.to_string()))));
    }

    fn cancel_everything(&mut self) {
        let removed = self.scheduler.remove_where(|_| true);
        self.retire(removed.into_iter().map(|seq| (seq, FinishReason::Cancelled, None)));
        // Requests that raced with shutdown.
        let raced: Vec<Sequence> = std::iter::from_fn(|| match self.commands.try_recv() {
            Ok(Command::Submit(seq)) => Some(*seq),
            _ => None,
        })
        .collect();
        self.retire(raced.into_iter().map(|seq| (seq, FinishReason::Cancelled, None)));
        self.publish_gauges();
    }

    /// Ends sequences: gives back their blocks and queue places, counts the outcomes and
    /// publishes the gauges, and only then delivers their `Finished` events, so a caller that
    /// sees `Finished` also sees the blocks free in the metrics.
    fn retire(&mut self, ended: impl IntoIterator<Item = (Sequence, FinishReason, Option<String>)>) {
        let metrics = &self.shared.metrics;
        let mut finals: Vec<FinalEvent> = Vec::new();
        for (seq, reason, error) in ended {
            add(&metrics.requests_finished, 1);
            match reason {
                FinishReason::Cancelled => add(&metrics.requests_cancelled, 1),
                FinishReason::Error => add(&metrics.requests_failed, 1),
                _ => {}
            }
            finals.push(seq.finish(reason, error));
        }
        if finals.is_empty() {
            return;
        }
        self.publish_gauges();
        for event in finals {
            event.deliver();
        }
    }

    fn publish_gauges(&self) {
        let m = &self.shared.metrics;
        m.queue_depth.store(self.scheduler.waiting_len(), Ordering::Relaxed);
        m.running.store(self.scheduler.running.len(), Ordering::Relaxed);
        m.kv_blocks_free.store(self.scheduler.allocator.available(), Ordering::Relaxed);
        if let Some(sliding) = &self.scheduler.sliding {
            m.kv_sliding_blocks_free.store(sliding.allocator.available(), Ordering::Relaxed);
        }
    }
}

/// Takes the constraint state out of every sequence that samples a token this step, with its
/// index in `running` (put back after the forward).
fn take_sampling_constraints(running: &mut [Sequence], plan: &[ScheduledChunk]) -> Vec<(usize, ConstraintState)> {
    plan.iter()
        .filter(|c| c.want_logits)
        .filter_map(|c| running[c.index].constraint.take().map(|state| (c.index, state)))
        .collect()
}

/// Runs the forward and, on a helper thread meanwhile, the token masks of `constrained`: a
/// mask depends only on the tokens already sampled, so it need not wait for the logits, and
/// 32 constrained streams cost little more than 32 free ones. Without constrained sequences
/// no thread is started.
fn forward_and_masks(
    model: &GenerationModel,
    chunks: &[SeqChunk<'_>],
    kv: &mut KvStorage,
    logits: &mut Vec<f32>,
    constrained: &mut [(usize, ConstraintState)],
) -> Result<()> {
    if constrained.is_empty() {
        return model.forward(chunks, kv, logits);
    }
    std::thread::scope(|scope| {
        let masks = scope.spawn(|| constrained.iter_mut().for_each(|(_, state)| state.prepare_mask()));
        let outcome = model.forward(chunks, kv, logits);
        // A panic while masking leaves the masks unprepared; sampling then computes them
        // itself (and reports any failure on that request alone).
        let _ = masks.join();
        outcome
    })
}

/// Samples the next token of `seq` from its logits, streams it, and says whether the
/// request is now finished (and why).
fn advance(
    seq: &mut Sequence,
    logits: &mut [f32],
    tokenizer: &Tokenizer,
    metrics: &Metrics,
) -> Option<(FinishReason, Option<String>)> {
    let now = Instant::now();
    if let Some(constraint) = &mut seq.constraint {
        if let Err(message) = constraint.mask_logits(logits) {
            return Some((FinishReason::Error, Some(message)));
        }
    }
    let sampled = seq.sampler.sample(logits, &seq.tokens);
    let token = sampled.token;
    let grammar_complete = match seq.constraint.as_mut().map(|c| c.advance(token)) {
        Some(Err(message)) => return Some((FinishReason::Error, Some(message))),
        Some(Ok(complete)) => complete,
        None => false,
    };
    seq.tokens.push(token);
    seq.sampler.observe(token);
    add(&metrics.generated_tokens_total, 1);
    match seq.last_token {
        None => metrics.observe_ttft(now.duration_since(seq.submitted).as_secs_f64()),
        Some(prev) => metrics.observe_per_token(now.duration_since(prev).as_secs_f64()),
    }
    seq.first_token.get_or_insert(now);
    seq.last_token = Some(now);

    let mut reason = None;
    let mut text = String::new();
    if seq.stop_ids.contains(&token) {
        reason = Some(FinishReason::Stop);
    } else {
        // Special tokens (control markers) are not part of the visible text.
        let bytes = if tokenizer.is_special(token) { &[][..] } else { tokenizer.token_bytes(token).unwrap_or(&[]) };
        match seq.text.push(bytes) {
            Step::Text(t) => text = t,
            Step::Stopped(t) => {
                text = t;
                reason = Some(FinishReason::Stop);
            }
        }
    }
    if reason.is_none() && grammar_complete {
        reason = Some(FinishReason::Stop);
    }
    if reason.is_none() && seq.generated() >= seq.max_new_tokens {
        reason = Some(FinishReason::Length);
    }
    if reason.is_some() {
        // Nothing can complete a stop string any more: release what was held back.
        text.push_str(&seq.text.finish());
    }
    let mut logprobs = sampled.logprobs;
    if let Some(logprobs) = &mut logprobs {
        logprobs.fill_bytes(token, tokenizer);
    }
    let event = Event::Token { id: token, text, logprobs };
    match seq.sink.deliver(event) {
        Delivery::Delivered => reason.map(|r| (r, None)),
        Delivery::ConsumerGone => Some((FinishReason::Cancelled, None)),
        Delivery::CallbackPanicked(message) => {
            Some((FinishReason::Error, Some(format!("the event callback panicked: {message}"))))
        }
    }
}
