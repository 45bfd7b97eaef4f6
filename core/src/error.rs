//! One error type for the whole core. Every binding maps it exactly once
//! (C: status code + message, Python: exception class, Node: JS error with `code`).

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in cortexstream.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field failed validation. `param` names the field as users spell it
    /// (`temperature`, `top_p`, `max_tokens`, `messages`, ...).
    #[error("invalid value for `{param}`: {message}")]
    InvalidRequest { param: &'static str, message: String },

    /// The prompt (plus the requested completion) does not fit in the context window.
    #[error("{message}")]
    ContextLengthExceeded {
        /// `messages` for chat requests, `prompt` otherwise.
        param: &'static str,
        message: String,
        prompt_tokens: usize,
        max_tokens: usize,
        context_length: usize,
    },

    /// A model file is missing, unreadable, not the expected format or unsupported.
    #[error("cannot load model {path}: {message}")]
    ModelLoad { path: PathBuf, message: String },

    /// The named model is not known to the engine or the model cache.
    #[error("model not found: {0}")]
    ModelNotFound(String),

    /// Tokenizer construction, encoding or decoding failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    /// The chat template failed to render (e.g. it raised an exception).
    #[error("chat template error: {0}")]
    ChatTemplate(String),

    /// A chat request reached a model that ships no chat template, and none was configured.
    /// Guessing a format (say ChatML) would prompt the model in a format it was never trained
    /// on, so this is an error; plain text and token prompts still work.
    #[error(
        "the model has no chat template (GGUF `tokenizer.chat_template` is absent), so chat messages cannot be \
         formatted for it; supply one with the engine option `chat_template`, or send a plain text prompt"
    )]
    ChatTemplateMissing,

    /// The engine has been shut down; no new work is accepted.
    #[error("the engine is closed")]
    EngineClosed,

    /// The request queue is full; retry later.
    #[error("the engine is overloaded: {0}")]
    Overloaded(String),

    /// The request was cancelled before it produced a result.
    #[error("the request was cancelled")]
    Cancelled,

    /// No embedding model is loaded.
    #[error("no embedding model is loaded")]
    NoEmbeddingModel,

    /// A bug or an unexpected failure inside the engine (e.g. a caught panic).
    #[error("internal error: {0}")]
    Internal(String),

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Shorthand for a validation error naming the offending field.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidRequest { param, message: message.into() }
    }

    /// Shorthand for a model load error.
    pub fn model_load(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::ModelLoad { path: path.into(), message: message.into() }
    }

    /// A stable machine-readable code, shared by every front door
    /// (OpenAI's `code` field, the Node `code` property, the C status names).
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidRequest { .. } => "invalid_request",
            Error::ContextLengthExceeded { .. } => "context_length_exceeded",
            Error::ModelLoad { .. } => "model_load_error",
            Error::ModelNotFound(_) => "model_not_found",
            Error::Tokenizer(_) => "tokenizer_error",
            Error::ChatTemplate(_) => "chat_template_error",
            Error::ChatTemplateMissing => "chat_template_missing",
            Error::EngineClosed => "engine_closed",
            Error::Overloaded(_) => "overloaded",
            Error::Cancelled => "cancelled",
            Error::NoEmbeddingModel => "no_embedding_model",
            Error::Internal(_) => "internal_error",
            Error::Io { .. } => "io_error",
        }
    }

    /// The request field at fault, when there is one.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            Error::InvalidRequest { param, .. } => Some(param),
            Error::ContextLengthExceeded { param, .. } => Some(param),
            Error::ChatTemplateMissing => Some("messages"),
            _ => None,
        }
    }
}
