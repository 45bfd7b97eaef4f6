//! What a finished request, the loaded model and an embedding call report.

use std::path::PathBuf;

use super::EngineConfig;
use crate::error::Result;
use crate::gguf::{file_type_name, GgufFile, Value};

use crate::request::{Event, FinishReason, StopReason, Timings, TokenLogprobs, Usage};

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
    /// Source of the chat template in use: the configured one, else the model's
    /// (`tokenizer.chat_template`); `None`: the model has none.
    pub chat_template: Option<String>,
    /// Parameters: the elements of every tensor in the file.
    pub parameter_count: u64,
    /// The file's quantization (`general.file_type` by llama.cpp's name, e.g. `Q4_K_M`), if it says.
    pub quantization: Option<String>,
}

/// What a generation model's GGUF says about it as an engine with `config` serves it, read from
/// the file's metadata alone (no weights): the fields of [`ModelInfo`] a model listing shows
/// (Ollama's `/api/show`). [`Engine::new`](super::Engine::new) fills its [`ModelInfo`] from
/// this, so a description before loading and after agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDescription {
    /// `general.architecture`.
    pub architecture: String,
    /// The context window an engine with this config serves: the model's, capped by the
    /// config's `context_length` and the KV cache.
    pub context_length: usize,
    /// The configured chat template, else the model's (`tokenizer.chat_template`).
    pub chat_template: Option<String>,
    /// Parameters: the elements of every tensor in the file.
    pub parameter_count: u64,
    /// `general.file_type` by llama.cpp's name (`Q4_K_M`), if the file says.
    pub quantization: Option<String>,
}

impl ModelDescription {
    /// Reads the description from `gguf`'s metadata; `trained_context` is the model's own
    /// window (its shape's, once loaded).
    pub fn new(gguf: &GgufFile, config: &EngineConfig, trained_context: usize) -> Self {
        let kv_capacity_tokens = config.kv_cache_tokens / config.block_size * config.block_size;
        Self {
            architecture: gguf.require_str("general.architecture").unwrap_or("llama").to_string(),
            context_length: config
                .context_length
                .unwrap_or(trained_context)
                .min(trained_context)
                .min(kv_capacity_tokens),
            chat_template: config
                .chat_template
                .clone()
                .or_else(|| gguf.get("tokenizer.chat_template").and_then(Value::as_str).map(str::to_string)),
            parameter_count: gguf.tensors().iter().map(|t| t.element_count() as u64).sum(),
            quantization: gguf
                .get("general.file_type")
                .and_then(Value::as_u64)
                .and_then(file_type_name)
                .map(str::to_string),
        }
    }

    /// The description of the model at `config.model` without loading it: its trained window
    /// is its metadata's `{architecture}.context_length` (a loaded engine's [`ModelInfo`] is
    /// exact where an architecture adjusts it, as LongRoPE models do).
    pub fn read(config: &EngineConfig) -> Result<Self> {
        let gguf = GgufFile::open(&config.model)?;
        let architecture = gguf.require_str("general.architecture")?;
        let trained = gguf.require_u64(&format!("{architecture}.context_length"))?;
        Ok(Self::new(&gguf, config, usize::try_from(trained).unwrap_or(usize::MAX)))
    }
}

impl From<&ModelInfo> for ModelDescription {
    fn from(info: &ModelInfo) -> Self {
        Self {
            architecture: info.architecture.clone(),
            context_length: info.context_length,
            chat_template: info.chat_template.clone(),
            parameter_count: info.parameter_count,
            quantization: info.quantization.clone(),
        }
    }
}

/// The embedding model, when one is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingInfo {
    pub name: String,
    pub path: PathBuf,
    pub dim: usize,
    pub max_tokens: usize,
}

/// The result of [`Engine::embed`](super::Engine::embed).
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
    /// Which stop ended it (`finish_reason` is always `stop_reason.finish_reason()`).
    pub stop_reason: StopReason,
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
            Event::Finished { reason, stop_reason, usage, timings, error } => Some(Completion {
                text: std::mem::take(&mut self.text),
                token_ids: std::mem::take(&mut self.token_ids),
                finish_reason: reason,
                stop_reason,
                usage,
                timings,
                logprobs: std::mem::take(&mut self.logprobs),
                error,
            }),
        }
    }
}
