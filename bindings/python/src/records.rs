//! Read-only result records handed to Python, converted from the core's types.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::tools::ToolCall;

/// `__repr__` in Python's `Name(field=value, ...)` style, each value shown by its own `repr`.
macro_rules! python_repr {
    ($record:ident { $($field:ident),+ $(,)? }) => {
        #[pymethods]
        impl $record {
            fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
                let mut fields = Vec::new();
                $(fields.push(format!("{}={}", stringify!($field), slf.getattr(stringify!($field))?.repr()?));)+
                Ok(format!("{}({})", stringify!($record), fields.join(", ")))
            }
        }
    };
}

/// Token counts of one request.
#[pyclass(frozen, get_all, module = "cortexstream._core")]
#[derive(Debug, Clone)]
pub struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
    total_tokens: usize,
    cached_prompt_tokens: usize,
}
python_repr!(Usage { prompt_tokens, completion_tokens, total_tokens, cached_prompt_tokens });

impl From<cortexstream::Usage> for Usage {
    fn from(usage: cortexstream::Usage) -> Self {
        Self {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.total_tokens(),
            cached_prompt_tokens: usage.cached_prompt_tokens,
        }
    }
}

/// Nanosecond timings of one request.
#[pyclass(frozen, get_all, module = "cortexstream._core")]
#[derive(Debug, Clone)]
pub struct Timings {
    queued_ns: u64,
    time_to_first_token_ns: u64,
    prefill_ns: u64,
    decode_ns: u64,
    per_token_ns: u64,
    total_ns: u64,
}
python_repr!(Timings { queued_ns, time_to_first_token_ns, prefill_ns, decode_ns, per_token_ns, total_ns });

impl From<cortexstream::Timings> for Timings {
    fn from(t: cortexstream::Timings) -> Self {
        Self {
            queued_ns: t.queued_ns,
            time_to_first_token_ns: t.time_to_first_token_ns,
            prefill_ns: t.prefill_ns,
            decode_ns: t.decode_ns,
            per_token_ns: t.per_token_ns,
            total_ns: t.total_ns,
        }
    }
}

/// Which stop ended a request: `kind` is `"eos"`, `"stop_token"`, `"stop_string"`,
/// `"grammar"`, `"length"`, `"cancelled"` or `"error"`; `token_id` is set for `eos` and
/// `stop_token`, `stop_string` for `stop_string`.
#[pyclass(frozen, get_all, module = "cortexstream._core")]
#[derive(Debug, Clone)]
pub struct StopReason {
    kind: &'static str,
    token_id: Option<u32>,
    stop_string: Option<String>,
}
python_repr!(StopReason { kind, token_id, stop_string });

impl From<&cortexstream::StopReason> for StopReason {
    fn from(stop: &cortexstream::StopReason) -> Self {
        Self { kind: stop.kind(), token_id: stop.token_id(), stop_string: stop.stop_string().map(str::to_owned) }
    }
}

/// Log-probability of one sampled token and its top alternatives `(token_id, logprob)`, with
/// the raw bytes of each token (a byte-level token may be part of a UTF-8 character, so bytes
/// rather than text).
#[pyclass(frozen, module = "cortexstream._core")]
#[derive(Debug, Clone)]
pub struct TokenLogprobs {
    #[pyo3(get)]
    token_id: u32,
    #[pyo3(get)]
    logprob: f32,
    #[pyo3(get)]
    top: Vec<(u32, f32)>,
    token_bytes: Vec<u8>,
    top_token_bytes: Vec<Vec<u8>>,
}

#[pymethods]
impl TokenLogprobs {
    /// The sampled token's raw bytes (`bytes`, not always valid UTF-8 alone).
    #[getter]
    fn bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.token_bytes)
    }

    /// The raw bytes of each alternative in `top`, in the same order.
    #[getter]
    fn top_bytes<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        self.top_token_bytes.iter().map(|bytes| PyBytes::new(py, bytes)).collect()
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let mut fields = Vec::new();
        for name in ["token_id", "logprob", "bytes", "top", "top_bytes"] {
            fields.push(format!("{name}={}", slf.getattr(name)?.repr()?));
        }
        Ok(format!("TokenLogprobs({})", fields.join(", ")))
    }
}

impl TokenLogprobs {
    /// The core reports alternatives per event; the sampled token's id comes with the event.
    pub fn new(token_id: u32, logprobs: cortexstream::TokenLogprobs) -> Self {
        let (top, top_token_bytes) =
            logprobs.top.into_iter().map(|alt| ((alt.token_id, alt.logprob), alt.bytes)).unzip();
        Self { token_id, logprob: logprobs.logprob, top, token_bytes: logprobs.bytes, top_token_bytes }
    }
}

/// One item of a stream: a piece of text, or (last) the finish reason with usage and timings.
#[pyclass(frozen, get_all, module = "cortexstream._core")]
#[derive(Debug, Clone)]
pub struct Chunk {
    pub(crate) text: String,
    pub(crate) token_id: Option<u32>,
    pub(crate) logprobs: Option<TokenLogprobs>,
    pub(crate) finish_reason: Option<&'static str>,
    pub(crate) stop_reason: Option<StopReason>,
    pub(crate) usage: Option<Usage>,
    pub(crate) timings: Option<Timings>,
    pub(crate) error: Option<String>,
    /// Calls completed by this chunk (only when the request offered tools).
    pub(crate) tool_calls: Vec<ToolCall>,
}
python_repr!(Chunk { text, token_id, logprobs, finish_reason, stop_reason, usage, timings, error, tool_calls });

/// The whole result of one request.
#[pyclass(frozen, get_all, module = "cortexstream._core")]
#[derive(Debug, Clone)]
pub struct Completion {
    pub(crate) text: String,
    pub(crate) token_ids: Vec<u32>,
    pub(crate) finish_reason: &'static str,
    pub(crate) stop_reason: StopReason,
    pub(crate) usage: Usage,
    pub(crate) timings: Timings,
    pub(crate) logprobs: Option<Vec<TokenLogprobs>>,
    pub(crate) error: Option<String>,
    /// The calls the answer made (only when the request offered tools; `text` is then the
    /// answer without them, and `finish_reason` is "tool_calls" if it stopped after calling).
    pub(crate) tool_calls: Vec<ToolCall>,
}
python_repr!(Completion { text, token_ids, finish_reason, stop_reason, usage, timings, logprobs, error, tool_calls });

impl Completion {
    /// `wants_logprobs`: the request asked for log-probabilities (`None` otherwise, not `[]`).
    pub fn new(c: cortexstream::Completion, wants_logprobs: bool) -> Self {
        let logprobs = c.token_ids.iter().zip(c.logprobs).map(|(&id, l)| TokenLogprobs::new(id, l)).collect();
        Self {
            text: c.text,
            token_ids: c.token_ids,
            finish_reason: c.finish_reason.as_str(),
            stop_reason: (&c.stop_reason).into(),
            usage: c.usage.into(),
            timings: c.timings.into(),
            logprobs: wants_logprobs.then_some(logprobs),
            error: c.error,
            tool_calls: Vec::new(),
        }
    }

    /// Splits the text into content and the calls written in `format`.
    pub fn with_tool_calls(mut self, format: cortexstream::ToolCallFormat, reason: cortexstream::FinishReason) -> Self {
        let parsed = cortexstream::tools::parse_tool_calls(format, &self.text);
        self.finish_reason = cortexstream::tools::finish_reason(reason, !parsed.tool_calls.is_empty());
        if !parsed.tool_calls.is_empty() {
            self.text = parsed.content;
            self.tool_calls = parsed.tool_calls.into_iter().map(ToolCall::from).collect();
        }
        self
    }
}

/// What the engine has loaded.
#[pyclass(frozen, get_all, module = "cortexstream._core")]
#[derive(Debug, Clone)]
pub struct ModelInfo {
    name: String,
    path: String,
    architecture: String,
    context_length: usize,
    vocab_size: usize,
    embedding_model: Option<String>,
    embedding_dim: Option<usize>,
    chat_template: Option<String>,
    parameter_count: u64,
    quantization: Option<String>,
}
python_repr!(ModelInfo { name, path, architecture, context_length, vocab_size, embedding_model, embedding_dim });

impl From<&cortexstream::ModelInfo> for ModelInfo {
    fn from(info: &cortexstream::ModelInfo) -> Self {
        Self {
            name: info.name.clone(),
            path: info.path.display().to_string(),
            architecture: info.architecture.clone(),
            context_length: info.context_length,
            vocab_size: info.vocab_size,
            embedding_model: info.embedding.as_ref().map(|e| e.name.clone()),
            embedding_dim: info.embedding.as_ref().map(|e| e.dim),
            chat_template: info.chat_template.clone(),
            parameter_count: info.parameter_count,
            quantization: info.quantization.clone(),
        }
    }
}
