//! What a finished request, the loaded model and an embedding call report.

use std::path::PathBuf;

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
