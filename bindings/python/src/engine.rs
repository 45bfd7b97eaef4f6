//! `Engine`: the core engine behind Python methods. Every call that computes or waits
//! releases the GIL.

use std::path::PathBuf;
use std::sync::Arc;

use cortexstream::tools::parsed_format;
use cortexstream::{EngineConfig, OptionValue, Prompt};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyType};

use crate::errors::to_py_err;
use crate::options::{chat_messages, kwargs_entries, raw_prompt, request};
use crate::records::{Completion, ModelInfo};
use crate::registry::Lease;
use crate::stream::Stream;

/// A loaded model serving requests from any thread. Arguments left as `None` take the
/// core's defaults. `cortexstream.Engine` subclasses this to resolve model names.
#[pyclass(frozen, subclass, module = "cortexstream._core")]
pub struct Engine {
    engine: EngineRef,
}

/// An engine this object owns, or one a `Registry` owns and lent through a lease.
enum EngineRef {
    Owned(cortexstream::Engine),
    /// `close()` leaves it running: the registry decides when it unloads.
    Lent(Arc<cortexstream::Engine>),
}

impl std::ops::Deref for EngineRef {
    type Target = cortexstream::Engine;
    fn deref(&self) -> &cortexstream::Engine {
        match self {
            Self::Owned(engine) => engine,
            Self::Lent(engine) => engine,
        }
    }
}

impl Engine {
    /// A Python engine over a registry's model (see `Lease.engine`).
    fn lent(engine: Arc<cortexstream::Engine>) -> Self {
        Self { engine: EngineRef::Lent(engine) }
    }
}

impl Engine {
    fn submit(&self, py: Python<'_>, prompt: Prompt, sampling: Option<&Bound<'_, PyDict>>) -> PyResult<Stream> {
        let request = request(prompt, sampling)?;
        let wants_logprobs = request.params.logprobs.is_some();
        let tool_format = parsed_format(&request, self.engine.tool_call_format());
        let handle = py.detach(|| self.engine.submit(request)).map_err(to_py_err)?;
        Ok(Stream::new(handle, wants_logprobs, tool_format))
    }

    fn embed_texts(&self, py: Python<'_>, texts: &Bound<'_, PyAny>) -> PyResult<cortexstream::Embeddings> {
        let texts: Vec<String> =
            if texts.is_instance_of::<PyString>() { vec![texts.extract()?] } else { texts.extract()? };
        py.detach(|| {
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            self.engine.embed(&texts)
        })
        .map_err(to_py_err)
    }
}

#[pymethods]
impl Engine {
    /// `settings` are the core's engine settings by name (`EngineConfig::setting_names`).
    #[new]
    #[pyo3(signature = (model, *, _lease=None, **settings))]
    fn new(
        py: Python<'_>,
        model: PathBuf,
        _lease: Option<PyRef<'_, Lease>>,
        settings: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        // `Lease.engine` builds the `cortexstream.Engine` subclass (with its asyncio methods)
        // over a registry's engine this way; the other arguments are then ignored.
        if let Some(lease) = _lease {
            return lease.generation_engine().map(Self::lent);
        }
        let config =
            EngineConfig::from_settings(model, OptionValue::Map(kwargs_entries(settings)?)).map_err(to_py_err)?;
        let engine = py.detach(|| cortexstream::Engine::new(config)).map_err(to_py_err)?;
        Ok(Self { engine: EngineRef::Owned(engine) })
    }

    /// Generates a completion for a text or token-id prompt (blocks; the GIL is released).
    #[pyo3(signature = (prompt, **sampling))]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        sampling: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Completion> {
        self.submit(py, raw_prompt(prompt)?, sampling)?.run_to_end(py)
    }

    /// Generates the assistant's reply to chat messages (dicts with `role` and `content`).
    #[pyo3(signature = (messages, **sampling))]
    fn chat(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        sampling: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Completion> {
        self.submit(py, Prompt::Chat(chat_messages(messages)?), sampling)?.run_to_end(py)
    }

    /// Submits a text or token-id prompt and returns its chunks as they are generated.
    #[pyo3(signature = (prompt, **sampling))]
    fn stream(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        sampling: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Stream> {
        self.submit(py, raw_prompt(prompt)?, sampling)
    }

    /// Submits chat messages and returns the reply's chunks as they are generated.
    #[pyo3(signature = (messages, **sampling))]
    fn stream_chat(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        sampling: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Stream> {
        self.submit(py, Prompt::Chat(chat_messages(messages)?), sampling)
    }

    /// Unit-length embedding vectors, one per text.
    fn embed(&self, py: Python<'_>, texts: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<f32>>> {
        Ok(self.embed_texts(py, texts)?.vectors)
    }

    /// Embedding vectors and the number of tokens they consumed.
    fn embed_with_usage(&self, py: Python<'_>, texts: &Bound<'_, PyAny>) -> PyResult<(Vec<Vec<f32>>, usize)> {
        let embeddings = self.embed_texts(py, texts)?;
        Ok((embeddings.vectors, embeddings.prompt_tokens))
    }

    /// Token ids of `text` with the generation model's tokenizer.
    #[pyo3(signature = (text, add_special_tokens=false))]
    fn tokenize(&self, py: Python<'_>, text: &str, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        py.detach(|| self.engine.tokenize(text, add_special_tokens)).map_err(to_py_err)
    }

    /// Text of token ids.
    fn detokenize(&self, py: Python<'_>, ids: Vec<u32>) -> PyResult<String> {
        py.detach(|| self.engine.detokenize(&ids)).map_err(to_py_err)
    }

    /// Renders chat messages with the model's chat template.
    #[pyo3(signature = (messages, add_generation_prompt=true))]
    fn apply_chat_template(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        add_generation_prompt: bool,
    ) -> PyResult<String> {
        let messages = chat_messages(messages)?;
        py.detach(|| self.engine.apply_chat_template(&messages, add_generation_prompt)).map_err(to_py_err)
    }

    /// Counters and histograms as a dict; histograms are
    /// `{"buckets": [(upper_bound, cumulative_count), ...], "sum": float, "count": int}`.
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        // The snapshot's `Serialize` builds the dict directly (no JSON text in between), so it
        // stays in step with the core's fields.
        pythonize::pythonize(py, &self.engine.metrics())
            .map_err(|e| to_py_err(cortexstream::Error::Internal(format!("metrics: {e}"))))
    }

    /// What the engine has loaded.
    #[getter]
    fn model_info(&self) -> ModelInfo {
        self.engine.model_info().into()
    }

    /// Whether `close()` has been called.
    #[getter]
    fn closed(&self) -> bool {
        self.engine.is_closed()
    }

    /// Cancels in-flight requests, stops the engine thread and frees the model. Idempotent;
    /// later calls raise `EngineClosedError`.
    fn close(&self, py: Python<'_>) {
        if let EngineRef::Owned(engine) = &self.engine {
            py.detach(|| engine.shutdown());
        }
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<&Bound<'_, PyType>>,
        _exc_value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) {
        self.close(py);
    }
}
