//! The [`Engine`]: owns the model and the step-loop thread. Callers submit requests from any
//! thread and read events from a [`RequestHandle`] (or a callback); embeddings run directly on
//! the caller's thread, outside the generation scheduler.

mod admission;
pub(crate) mod block_allocator;
mod completion;
mod config;
mod handle;
pub(crate) mod scheduler;
pub(crate) mod sequence;
mod settings;
pub(crate) mod step_budget;
mod step_loop;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use crate::chat::ChatTemplate;
use crate::constraint::compiler::ConstraintCompiler;
use crate::constraint::masks::MaskCounters;
use crate::constraint::MaskCounts;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::metrics::{add, Metrics, MetricsSnapshot};
use crate::models::bert::BertEmbedder;
use crate::models::GenerationModel;
use crate::request::{ChatMessage, Request};
use crate::threadpool::{default_thread_count, ThreadPool};
use crate::tokenizer::Tokenizer;
use crate::tools::ToolCallFormat;
use block_allocator::BlockAllocator;
use config::kv_cache_bytes;
use scheduler::{Scheduler, SchedulerConfig, SlidingPool};
use sequence::{panic_message, EventCallback, QueueSlot, Sequence};
use step_loop::StepLoop;

pub use completion::{Completion, CompletionBuilder, EmbeddingInfo, Embeddings, ModelDescription, ModelInfo};
pub use config::{sliding_pool_blocks, EngineConfig, DEFAULT_TARGET_STEP_MS};
pub use handle::{Canceller, RecvError, RequestHandle};

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
    /// How the token masks of constrained sequences were computed (beside the forward or late).
    mask_counters: Arc<MaskCounters>,
    /// Put prompt text in the request spans (`EngineConfig::log_prompts`).
    log_prompts: bool,
    /// See [`Engine::memory_bytes`].
    memory_bytes: u64,
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
        let load_started = std::time::Instant::now();
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
        let kv_bytes =
            kv_cache_bytes(num_blocks, sliding_blocks.unwrap_or(0), config.block_size, mc, config.kv_cache_type)?;
        let memory_bytes = resident_estimate(&config, kv_bytes);
        let kv_capacity_tokens = num_blocks * config.block_size;
        let described = ModelDescription::new(&gguf, &config, mc.context_length);
        let context_length = described.context_length;
        let info = ModelInfo {
            name: mc.name.clone(),
            path: config.model.clone(),
            architecture: described.architecture,
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
            chat_template: described.chat_template,
            parameter_count: described.parameter_count,
            quantization: described.quantization,
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
        }
        .with_cache_type(config.kv_cache_type);
        let mut scheduler = Scheduler::new(
            SchedulerConfig { max_running: config.max_running, max_prefill_tokens: config.max_prefill_tokens },
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
            mask_counters: Arc::default(),
            log_prompts: config.log_prompts,
            memory_bytes,
        });
        let worker = StepLoop::new(Arc::clone(&shared), model, kv, scheduler, config.step_budget(), command_rx);
        let thread = std::thread::Builder::new()
            .name("cortexstream-engine".into())
            .spawn(move || worker.run())
            .map_err(|e| Error::Internal(format!("cannot start the engine thread: {e}")))?;
        log_model_loaded(&shared.info, num_blocks, load_started);
        Ok(Self { shared, commands, thread: Mutex::new(Some(thread)) })
    }

    /// Validates and queues a request; read its events from the returned handle.
    pub fn submit(&self, request: Request) -> Result<RequestHandle> {
        self.submit_inner(request, None)
    }

    /// Like [`submit`](Self::submit), but every event also goes to `callback`, called on the
    /// engine thread (keep it short). Returning `false` cancels the request; a panicking callback
    /// ends it with [`FinishReason::Error`](crate::request::FinishReason::Error). The handle
    /// receives only the `Finished` event.
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

    /// How the model writes tool calls, read from its chat template (see [`crate::tools`]).
    pub fn tool_call_format(&self) -> ToolCallFormat {
        self.shared.chat_template.tool_format()
    }

    pub fn model_info(&self) -> &ModelInfo {
        &self.shared.info
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.shared.tokenizer
    }

    /// Memory the engine holds, in bytes: the model files' sizes (the weights are loaded
    /// from them) plus the KV cache. What a model registry budgets and `/api/ps` reports.
    pub fn memory_bytes(&self) -> u64 {
        self.shared.memory_bytes
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
        let tag = request.tag.clone();
        let result = admission::prepare(shared, request, callback);
        let (mut sequence, handle) = match result {
            Ok(ok) => ok,
            Err(e) => {
                add(&metrics.requests_rejected, 1);
                log_rejected(tag.as_deref(), &e);
                return Err(e);
            }
        };
        let prompt_len = sequence.prompt_len as u64;
        let Some(slot) = QueueSlot::try_take(&shared.queued, shared.max_queue) else {
            add(&metrics.requests_rejected, 1);
            let error = Error::Overloaded(format!("the request queue is full (max_queue = {})", shared.max_queue));
            log_rejected(tag.as_deref(), &error);
            return Err(error);
        };
        sequence.queue_slot = Some(slot);
        // Logged before the send: once sent, the engine thread may log the request's next steps.
        tracing::info!(
            target: "cortexstream::request",
            parent: &sequence.span,
            prompt_tokens = prompt_len,
            max_tokens = sequence.max_new_tokens,
            "queued"
        );
        // A failed send drops the sequence, and with it the slot.
        if self.commands.send(Command::Submit(Box::new(sequence))).is_err() {
            log_rejected(tag.as_deref(), &Error::EngineClosed);
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

    /// How many compiled constraints this engine keeps cached now (bounded).
    #[doc(hidden)]
    pub fn constraint_cache_len(&self) -> usize {
        self.shared.constraints.cached()
    }

    /// How many token masks were ready before sampling (computed beside the forward) and how
    /// many sampling had to compute itself.
    #[doc(hidden)]
    pub fn constraint_mask_counts(&self) -> MaskCounts {
        self.shared.mask_counters.counts()
    }
}

/// The model is loaded and the engine thread started.
fn log_model_loaded(info: &ModelInfo, kv_blocks: usize, started: std::time::Instant) {
    tracing::info!(
        target: "cortexstream::model",
        file = %info.path.display(),
        name = info.name.as_str(),
        architecture = info.architecture.as_str(),
        bytes = std::fs::metadata(&info.path).map_or(0, |m| m.len()),
        context_length = info.context_length,
        kv_blocks,
        embedding_model = info.embedding.as_ref().map(|e| e.name.as_str()),
        load_ms = started.elapsed().as_secs_f64() * 1e3,
        "model loaded"
    );
}

/// A submit refused before queueing (bad input, full queue, closed engine).
fn log_rejected(tag: Option<&str>, error: &Error) {
    tracing::info!(
        target: "cortexstream::request",
        tag,
        code = error.code(),
        param = error.param(),
        error = %error,
        "rejected"
    );
}

/// The bytes an engine holds: its weight files plus the KV cache (see [`Engine::memory_bytes`]).
fn resident_estimate(config: &EngineConfig, kv_bytes: usize) -> u64 {
    let weights = std::fs::metadata(&config.model).map_or(0, |m| m.len());
    let embedding = config.embedding_model.as_deref().map_or(0, crate::memory::files_bytes);
    weights + embedding + kv_bytes as u64
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
