//! `Registry` and `Lease`: the core's model registry behind Python methods. Loading and
//! unloading release the GIL.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use cortexstream::registry::{KeepAlive, ModelLease, ModelSpec, RegistryOptions, ServedModel};
use cortexstream::{Error, OptionValue};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyType};

use crate::engine::Engine;
use crate::errors::to_py_err;
use crate::options::{kwargs_entries, option_value};

/// Several models by name, each loaded on first use into its own engine and unloaded when
/// idle past its keep-alive or, least recently used first, to stay within a memory budget.
#[pyclass(frozen, subclass, module = "cortexstream._core")]
pub struct Registry {
    registry: cortexstream::Registry,
}

/// A loaded model as `Registry.loaded()` lists it.
#[pyclass(frozen, get_all, module = "cortexstream._core")]
pub struct LoadedModel {
    name: String,
    is_embedding: bool,
    memory_bytes: u64,
    active_requests: usize,
    /// Unix time (seconds) it unloads if unused; `None`: never.
    expires_at: Option<f64>,
}

/// What a generation model is, as `Registry.describe()` reads it (from the GGUF's metadata,
/// without loading, or from the loaded engine).
#[pyclass(frozen, get_all, module = "cortexstream._core")]
pub struct ModelDescription {
    architecture: String,
    /// The context window an engine with the model's settings serves.
    context_length: usize,
    chat_template: Option<String>,
    parameter_count: u64,
    quantization: Option<String>,
}

impl From<cortexstream::ModelDescription> for ModelDescription {
    fn from(description: cortexstream::ModelDescription) -> Self {
        Self {
            architecture: description.architecture,
            context_length: description.context_length,
            chat_template: description.chat_template,
            parameter_count: description.parameter_count,
            quantization: description.quantization,
        }
    }
}

/// A hold on one registry model: it stays loaded (and its requests run) until `release()`.
#[pyclass(frozen, module = "cortexstream._core")]
pub struct Lease {
    lease: Mutex<Option<ModelLease>>,
    name: String,
    is_embedding: bool,
}

/// `keep_alive` as Ollama sends it: seconds (negative: forever) or a duration string.
fn keep_alive(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<KeepAlive>> {
    let Some(value) = value else { return Ok(None) };
    KeepAlive::from_value(&option_value(value)?).map_err(|e| to_py_err(e.into()))
}

/// Checks a `keep_alive` value (seconds, negative forever, or a duration such as `"5m"`) the
/// way `Registry` reads it, before any registry exists (a server config file's values);
/// raises `InvalidRequestError` naming `keep_alive`.
#[pyfunction]
pub fn check_keep_alive(value: &Bound<'_, PyAny>) -> PyResult<()> {
    keep_alive(Some(value)).map(|_| ())
}

#[pymethods]
impl Registry {
    #[new]
    #[pyo3(signature = (*, memory_budget_bytes=None, keep_alive=None))]
    fn new(memory_budget_bytes: Option<&Bound<'_, PyAny>>, keep_alive: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let mut entries = Vec::new();
        for (key, value) in [("memory_budget_bytes", memory_budget_bytes), ("keep_alive", keep_alive)] {
            if let Some(value) = value {
                entries.push((key.to_owned(), option_value(value)?));
            }
        }
        let options = RegistryOptions::from_settings(OptionValue::Map(entries)).map_err(to_py_err)?;
        Ok(Self { registry: cortexstream::Registry::new(options) })
    }

    /// Registers a GGUF generation model with engine settings, or with `embedding=True` a
    /// sentence-transformers folder (which takes only `threads`), under `name`. Loads nothing
    /// yet. The core reads the keywords (`ModelSpec::from_settings`).
    #[pyo3(signature = (name, model, *, embedding=None, keep_alive=None, **settings))]
    fn register(
        &self,
        name: String,
        model: PathBuf,
        embedding: Option<&Bound<'_, PyAny>>,
        keep_alive: Option<&Bound<'_, PyAny>>,
        settings: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let mut entries = kwargs_entries(settings)?;
        for (key, value) in [("embedding", embedding), ("keep_alive", keep_alive)] {
            if let Some(value) = value {
                entries.push((key.to_owned(), option_value(value)?));
            }
        }
        let spec = ModelSpec::from_settings(name, model, OptionValue::Map(entries)).map_err(to_py_err)?;
        self.registry.register(spec).map_err(|e| to_py_err(e.into()))
    }

    /// The registered names, sorted.
    fn names(&self) -> Vec<String> {
        self.registry.names()
    }

    /// The model `name`, loaded now if needed; use it while holding the returned lease.
    /// `keep_alive` (seconds, negative forever, or `"5m"`) becomes the model's from now on.
    #[pyo3(signature = (name, keep_alive=None))]
    fn get(&self, py: Python<'_>, name: &str, keep_alive: Option<&Bound<'_, PyAny>>) -> PyResult<Lease> {
        let keep_alive = self::keep_alive(keep_alive)?;
        let lease = py.detach(|| self.registry.get(name, keep_alive)).map_err(|e| to_py_err(e.into()))?;
        Ok(Lease { name: name.to_string(), is_embedding: lease.is_embedding(), lease: Mutex::new(Some(lease)) })
    }

    /// Loads `name` if needed and starts its keep-alive countdown.
    #[pyo3(signature = (name, keep_alive=None))]
    fn load(&self, py: Python<'_>, name: &str, keep_alive: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let keep_alive = self::keep_alive(keep_alive)?;
        py.detach(|| self.registry.load(name, keep_alive)).map_err(|e| to_py_err(e.into()))
    }

    /// Unloads `name` now (requests holding a lease finish first); whether it was loaded.
    fn unload(&self, py: Python<'_>, name: &str) -> PyResult<bool> {
        py.detach(|| self.registry.unload(name)).map_err(|e| to_py_err(e.into()))
    }

    /// Forgets `name` (unloading it; requests holding a lease finish first); whether it was
    /// registered.
    fn unregister(&self, py: Python<'_>, name: &str) -> bool {
        py.detach(|| self.registry.unregister(name))
    }

    /// What the generation model `name` is (architecture, served context length, chat template,
    /// parameter count, quantization) without loading it: read from its GGUF's metadata, or
    /// from its engine when loaded. `None` for an embedding model. Not a use of the model.
    fn describe(&self, py: Python<'_>, name: &str) -> PyResult<Option<ModelDescription>> {
        let description = py.detach(|| self.registry.describe(name)).map_err(to_py_err)?;
        Ok(description.map(ModelDescription::from))
    }

    /// The loaded models, by name, after unloading the expired ones.
    fn loaded(&self, py: Python<'_>) -> Vec<LoadedModel> {
        py.detach(|| self.registry.loaded()).into_iter().map(LoadedModel::from).collect()
    }

    /// The counters of every loaded model, by name: a generation model's `Engine.metrics()`,
    /// an embedding model's `embedding_requests` and `embedding_tokens_total`. Reading them
    /// neither restarts a model's keep-alive nor counts as a use.
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let snapshots = py.detach(|| self.registry.metrics());
        let metrics = PyDict::new(py);
        for (name, snapshot) in snapshots {
            let snapshot =
                pythonize::pythonize(py, &snapshot).map_err(|e| to_py_err(Error::Internal(format!("metrics: {e}"))))?;
            metrics.set_item(name, snapshot)?;
        }
        Ok(metrics)
    }

    /// `close()`, then ends (as cancelled) the requests still running on any of its models,
    /// leased ones included. Idempotent.
    fn shutdown(&self, py: Python<'_>) {
        py.detach(|| self.registry.shutdown());
    }

    /// Unloads every model; later `get`s raise `EngineClosedError`. Idempotent.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.registry.close());
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

impl From<cortexstream::registry::LoadedModel> for LoadedModel {
    fn from(model: cortexstream::registry::LoadedModel) -> Self {
        let expires_at = model.expires_at.map(|at| at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64());
        Self {
            name: model.name,
            is_embedding: model.is_embedding,
            memory_bytes: model.memory_bytes,
            active_requests: model.active_requests,
            expires_at,
        }
    }
}

impl Lease {
    /// The leased generation engine; an embedding model has none (`NoEmbeddingModel`'s
    /// counterpart: an invalid `model`).
    pub(crate) fn generation_engine(&self) -> PyResult<Arc<cortexstream::Engine>> {
        self.served()?.engine().cloned().ok_or_else(|| {
            to_py_err(Error::invalid(
                "model",
                format!("`{}` is an embedding model and cannot generate text", self.name),
            ))
        })
    }

    fn served(&self) -> PyResult<ServedModel> {
        let lease = self.lease.lock().unwrap_or_else(|e| e.into_inner());
        lease.as_ref().map(|l| l.model().clone()).ok_or_else(|| to_py_err(Error::EngineClosed))
    }
}

#[pymethods]
impl Lease {
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    #[getter]
    fn is_embedding(&self) -> bool {
        self.is_embedding
    }

    /// The generation engine as a `cortexstream.Engine` (with its asyncio methods), `None` for
    /// an embedding model. Its `close()` leaves the model to the registry.
    #[getter]
    fn engine<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyAny>>> {
        if slf.get().served()?.engine().is_none() {
            return Ok(None);
        }
        let py = slf.py();
        let subclass = py.import("cortexstream")?.getattr("Engine")?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("_lease", slf)?;
        // The compiled `__new__` with the subclass allocates the subclass (no `__init__` runs).
        let new = py.get_type::<Engine>().getattr("__new__")?;
        new.call((subclass, ""), Some(&kwargs)).map(Some)
    }

    /// Unit-length embedding vectors, one per text.
    fn embed(&self, py: Python<'_>, texts: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<f32>>> {
        Ok(self.embed_with_usage(py, texts)?.0)
    }

    /// Embedding vectors and the number of tokens they consumed.
    fn embed_with_usage(&self, py: Python<'_>, texts: &Bound<'_, PyAny>) -> PyResult<(Vec<Vec<f32>>, usize)> {
        let texts: Vec<String> =
            if texts.is_instance_of::<PyString>() { vec![texts.extract()?] } else { texts.extract()? };
        let model = self.served()?;
        let embeddings =
            py.detach(|| model.embed(&texts.iter().map(String::as_str).collect::<Vec<_>>())).map_err(to_py_err)?;
        Ok((embeddings.vectors, embeddings.prompt_tokens))
    }

    /// Ends the hold: the model's keep-alive countdown starts. Idempotent.
    fn release(&self, py: Python<'_>) {
        let lease = self.lease.lock().unwrap_or_else(|e| e.into_inner()).take();
        // Dropping it may unload the model (keep_alive 0): not under the GIL.
        py.detach(|| drop(lease));
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
        self.release(py);
    }
}
