//! # cortexstream
//!
//! An LLM inference core: load a llama-family GGUF, submit requests from any thread, and
//! stream tokens back while a continuous-batching scheduler runs one batched forward pass per
//! step over a paged KV cache. Embeddings run a BERT model beside it.
//!
//! ```no_run
//! use cortexstream::{Engine, EngineConfig, Request, SamplingParams, Event};
//! let engine = Engine::new(EngineConfig::new("SmolLM2-135M-Instruct.Q4_1.gguf"))?;
//! let handle = engine.submit(Request::new("The quick brown fox", SamplingParams::greedy()))?;
//! for event in handle {
//!     if let Event::Token { text, .. } = event { print!("{text}"); }
//! }
//! # Ok::<(), cortexstream::Error>(())
//! ```

// `#[doc(hidden)]`: modules only the tests, benches and fuzz targets reach from outside, not
// the public API (which is what lib.rs re-exports, plus chat, gguf, tokenizer and the rest).
pub mod chat;
pub mod constraint;
pub(crate) mod cpu;
#[doc(hidden)]
pub mod detokenize;
pub mod engine;
pub mod error;
pub(crate) mod f16;
pub mod gguf;
#[doc(hidden)]
pub mod gguf_write;
pub mod kernel_info;
#[doc(hidden)]
pub mod kv_cache;
pub(crate) mod memory;
pub mod metrics;
#[doc(hidden)]
pub mod models;
pub mod options;
#[doc(hidden)]
pub mod quant;
pub mod registry;
pub mod request;
#[doc(hidden)]
pub mod sampling;
pub mod telemetry;
pub mod threadpool;
pub mod timeout;
pub mod tokenizer;
pub mod tools;

pub use constraint::Constraint;
pub use engine::{
    Canceller, Completion, CompletionBuilder, EmbeddingInfo, Embeddings, Engine, EngineConfig, ModelDescription,
    ModelInfo, RecvError, RequestHandle,
};
pub use error::{Error, Result};
pub use kernel_info::{kernel_info, KernelInfo};
pub use kv_cache::KvCacheType;
pub use metrics::{Histogram, MetricsSnapshot};
pub use options::{OptionValue, RequestOptions};
pub use registry::{KeepAlive, ModelLease, ModelSpec, Registry, RegistryError, RegistryOptions, ServedModel};
pub use request::{
    ChatMessage, Event, FinishReason, Prompt, Request, SamplerSettings, SamplingParams, StopCriteria, StopReason,
    Timings, TokenLogprobs, TopLogprob, Usage,
};
pub use timeout::WaitLimit;
pub use tools::{ToolCall, ToolCallFormat, ToolChoice, ToolSpec};
