//! What a registry knows about a model before loading it ([`ModelSpec`]), and what it hands
//! out once loaded ([`ServedModel`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::engine::sequence::panic_message;
use crate::engine::{Embeddings, EngineConfig};
use crate::error::{Error, Result};
use crate::metrics::MetricsSnapshot;
use crate::models::bert::BertEmbedder;
use crate::options::OptionValue;
use crate::threadpool::{default_thread_count, ThreadPool};
use crate::Engine;

use super::KeepAlive;

/// A model a registry can load: its name, where its files are and how to build it.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub source: ModelSource,
    /// Keep-alive of this model when a request names none; `None`: the registry's default.
    pub keep_alive: Option<KeepAlive>,
}

/// Where a model's files are and how it is built.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A generation model: its own [`Engine`] (own KV cache, own step loop) built from this
    /// config (which may also name an embedding folder for [`Engine::embed`]).
    Generation(EngineConfig),
    /// A sentence-transformers folder served on its own (embeddings only).
    Embedding { dir: PathBuf, threads: Option<usize> },
}

impl ModelSpec {
    /// A generation model named `name`, built from `config`.
    pub fn generation(name: impl Into<String>, config: EngineConfig) -> Self {
        Self { name: name.into(), source: ModelSource::Generation(config), keep_alive: None }
    }

    /// An embedding model named `name`, loaded from a sentence-transformers folder.
    pub fn embedding(name: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        Self { name: name.into(), source: ModelSource::Embedding { dir: dir.into(), threads: None }, keep_alive: None }
    }

    /// A model named `name` at `model`, from what a front door's `register` received: a map
    /// with `embedding` (a bool: `model` is a sentence-transformers folder served on its own),
    /// `keep_alive` (see [`KeepAlive::from_value`]) and engine settings
    /// ([`EngineConfig::from_settings`]); an embedding model takes only `threads`. Nulls keep
    /// the defaults; errors name the setting.
    pub fn from_settings(name: impl Into<String>, model: impl Into<PathBuf>, settings: OptionValue) -> Result<Self> {
        let (registration, engine_settings): (Vec<_>, Vec<_>) = match settings {
            OptionValue::Null => (Vec::new(), Vec::new()),
            OptionValue::Map(entries) => {
                entries.into_iter().partition(|(key, _)| REGISTRATION_FIELDS.contains(&key.as_str()))
            }
            other => {
                return Err(Error::invalid("settings", format!("expected a map of settings, got {}", other.kind())))
            }
        };
        let mut embedding = false;
        let mut keep_alive = None;
        for (key, value) in registration {
            match key.as_str() {
                "embedding" => embedding = embedding_flag(value)?,
                _ => keep_alive = KeepAlive::from_value(&value).map_err(Error::from)?,
            }
        }
        let name = name.into();
        let source = if embedding {
            ModelSource::Embedding { dir: model.into(), threads: embedding_threads(&name, engine_settings)? }
        } else {
            ModelSource::Generation(EngineConfig::from_settings(model, OptionValue::Map(engine_settings))?)
        };
        Ok(Self { name, source, keep_alive })
    }

    /// The same spec with its own default keep-alive.
    pub fn with_keep_alive(mut self, keep_alive: KeepAlive) -> Self {
        self.keep_alive = Some(keep_alive);
        self
    }

    /// The model's file (GGUF) or folder.
    pub fn path(&self) -> &Path {
        match &self.source {
            ModelSource::Generation(config) => &config.model,
            ModelSource::Embedding { dir, .. } => dir,
        }
    }

    pub fn is_embedding(&self) -> bool {
        matches!(self.source, ModelSource::Embedding { .. })
    }

    /// Bytes the model's files take on disk: a lower bound of what loading it costs, used to
    /// make room before the first load (afterwards the loaded size is known).
    pub(crate) fn files_bytes(&self) -> u64 {
        crate::memory::files_bytes(self.path())
    }

    pub(crate) fn load(&self) -> Result<ServedModel> {
        match &self.source {
            ModelSource::Generation(config) => Ok(ServedModel::Generation(Arc::new(Engine::new(config.clone())?))),
            ModelSource::Embedding { dir, threads } => {
                Ok(ServedModel::Embedding(Arc::new(EmbeddingModel::load(dir, *threads)?)))
            }
        }
    }
}

/// What a `register` call takes besides engine settings.
pub const REGISTRATION_FIELDS: [&str; 2] = ["embedding", "keep_alive"];

fn embedding_flag(value: OptionValue) -> Result<bool> {
    match value {
        OptionValue::Null => Ok(false),
        OptionValue::Bool(flag) => Ok(flag),
        other => Err(Error::invalid("embedding", format!("must be a boolean, got {}", other.kind()))),
    }
}

/// The `threads` of an embedding model, the one engine setting it has; any other (not null)
/// is refused by name rather than ignored.
fn embedding_threads(name: &str, settings: Vec<(String, OptionValue)>) -> Result<Option<usize>> {
    let mut threads = None;
    for (key, value) in settings.into_iter().filter(|(_, value)| *value != OptionValue::Null) {
        let config = EngineConfig::from_settings("", OptionValue::Map(vec![(key.clone(), value)]))?;
        if key != "threads" {
            let param = EngineConfig::setting_names().into_iter().find(|known| *known == key).unwrap_or("settings");
            return Err(Error::invalid(
                param,
                format!("`{key}` is a setting of generation models; `{name}` is an embedding model (it takes only `threads`)"),
            ));
        }
        threads = config.threads;
    }
    Ok(threads)
}

/// A loaded model as the registry hands it out; cloning shares it.
#[derive(Debug, Clone)]
pub enum ServedModel {
    Generation(Arc<Engine>),
    Embedding(Arc<EmbeddingModel>),
}

impl ServedModel {
    /// The generation engine, or `None` for an embedding model.
    pub fn engine(&self) -> Option<&Arc<Engine>> {
        match self {
            Self::Generation(engine) => Some(engine),
            Self::Embedding(_) => None,
        }
    }

    /// Embeds with the embedding model, or with the engine's (if it was given one).
    pub fn embed(&self, texts: &[&str]) -> Result<Embeddings> {
        match self {
            Self::Generation(engine) => engine.embed(texts),
            Self::Embedding(model) => model.embed(texts),
        }
    }

    /// Length of the vectors [`Self::embed`] returns, or `None` when it has no embedding model
    /// (a generation engine loaded without one).
    pub fn embedding_dim(&self) -> Option<usize> {
        match self {
            Self::Generation(engine) => engine.model_info().embedding.as_ref().map(|e| e.dim),
            Self::Embedding(model) => Some(model.dim()),
        }
    }

    /// Memory the loaded model holds (see [`Engine::memory_bytes`]).
    pub fn memory_bytes(&self) -> u64 {
        match self {
            Self::Generation(engine) => engine.memory_bytes(),
            Self::Embedding(model) => model.memory_bytes,
        }
    }

    pub fn is_embedding(&self) -> bool {
        matches!(self, Self::Embedding(_))
    }

    /// The model's counters now: its engine's [`MetricsSnapshot`], or an embedding model's
    /// [`EmbeddingMetrics`]. Reading them does not count as a use.
    pub fn metrics(&self) -> ModelMetrics {
        match self {
            Self::Generation(engine) => ModelMetrics::Generation(engine.metrics()),
            Self::Embedding(model) => ModelMetrics::Embedding(model.metrics()),
        }
    }
}

/// A loaded model's counters, as [`Registry::metrics`](super::Registry::metrics) lists them.
/// Serialized without a tag: the fields of the snapshot itself (a REST server renders each
/// field as a Prometheus family labelled by model).
// A snapshot is built on request and handed out by value, never stored in bulk: its size
// costs nothing, and boxing it would change the public enum for every binding.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ModelMetrics {
    Generation(MetricsSnapshot),
    Embedding(EmbeddingMetrics),
}

/// The counters of an embedding model served on its own (a generation engine counts its own
/// embedding calls in [`MetricsSnapshot::embedding_requests`]). They start from zero when the
/// model loads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EmbeddingMetrics {
    /// Embedding calls made (one per `embed`, however many texts; failed ones included).
    pub embedding_requests: u64,
    /// Tokens the successful calls embedded (each text's, special tokens included).
    pub embedding_tokens_total: u64,
}

/// What [`EmbeddingMetrics`] reads, updated by any thread that embeds.
#[derive(Debug, Default)]
struct EmbeddingCounters {
    requests: AtomicU64,
    tokens: AtomicU64,
}

/// A sentence-embedding model served without a generation model.
pub struct EmbeddingModel {
    embedder: BertEmbedder,
    memory_bytes: u64,
    counters: EmbeddingCounters,
}

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel").field("name", &self.embedder.name()).finish()
    }
}

impl EmbeddingModel {
    pub fn load(dir: &Path, threads: Option<usize>) -> Result<Self> {
        let threads = threads.unwrap_or_else(default_thread_count);
        let pool = Arc::new(ThreadPool::new(threads).map_err(|e| Error::invalid("threads", e.to_string()))?);
        let embedder = BertEmbedder::load(dir, pool)?;
        Ok(Self { embedder, memory_bytes: crate::memory::files_bytes(dir), counters: EmbeddingCounters::default() })
    }

    pub fn embed(&self, texts: &[&str]) -> Result<Embeddings> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        // A panic in the embedder is a bug, reported as an error (as `Engine::embed` does).
        let embedded =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.embedder.embed_counting_tokens(texts)))
                .map_err(|panic| Error::Internal(panic_message(&panic)))?;
        let (vectors, prompt_tokens) = embedded?;
        self.counters.tokens.fetch_add(u64::try_from(prompt_tokens).unwrap_or(u64::MAX), Ordering::Relaxed);
        Ok(Embeddings { vectors, prompt_tokens })
    }

    /// The calls and tokens embedded since the model loaded.
    pub fn metrics(&self) -> EmbeddingMetrics {
        EmbeddingMetrics {
            embedding_requests: self.counters.requests.load(Ordering::Relaxed),
            embedding_tokens_total: self.counters.tokens.load(Ordering::Relaxed),
        }
    }

    pub fn dim(&self) -> usize {
        self.embedder.dim()
    }

    pub fn max_tokens(&self) -> usize {
        self.embedder.max_tokens()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(entries: &[(&str, OptionValue)]) -> OptionValue {
        OptionValue::Map(entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    #[test]
    fn a_generation_spec_takes_engine_settings_and_keep_alive() {
        let spec = ModelSpec::from_settings(
            "chat",
            "m.gguf",
            settings(&[
                ("keep_alive", OptionValue::Str("5m".into())),
                ("max_running", OptionValue::Int(2)),
                ("log_prompts", OptionValue::Bool(true)),
                ("embedding", OptionValue::Null),
            ]),
        )
        .unwrap();
        assert_eq!(spec.keep_alive, Some(KeepAlive::For(std::time::Duration::from_secs(300))));
        let ModelSource::Generation(config) = spec.source else { panic!("not a generation model") };
        assert_eq!(config.max_running, 2);
        assert!(config.log_prompts);
    }

    #[test]
    fn an_embedding_spec_takes_threads_only() {
        let spec = ModelSpec::from_settings(
            "minilm",
            "dir",
            settings(&[("embedding", OptionValue::Bool(true)), ("threads", OptionValue::Int(1))]),
        )
        .unwrap();
        assert!(matches!(spec.source, ModelSource::Embedding { threads: Some(1), .. }));
        let error = ModelSpec::from_settings(
            "minilm",
            "dir",
            settings(&[("embedding", OptionValue::Bool(true)), ("max_running", OptionValue::Int(2))]),
        )
        .unwrap_err();
        assert_eq!(error.param(), Some("max_running"), "{error}");
    }

    #[test]
    fn registry_options_are_read_by_name() {
        use crate::registry::RegistryOptions;
        let options = RegistryOptions::from_settings(settings(&[
            ("memory_budget_bytes", OptionValue::Int(1 << 30)),
            ("keep_alive", OptionValue::Int(-1)),
        ]))
        .unwrap();
        assert_eq!(options.memory_budget_bytes, Some(1 << 30));
        assert_eq!(options.default_keep_alive, KeepAlive::Forever);
        let defaults = RegistryOptions::from_settings(settings(&[("keep_alive", OptionValue::Null)])).unwrap();
        assert_eq!(defaults.default_keep_alive, crate::registry::DEFAULT_KEEP_ALIVE);
        for (name, value) in [
            ("memory_budget_bytes", OptionValue::Int(-1)),
            ("keep_alive", OptionValue::Str("soon".into())),
            ("budget", OptionValue::Int(1)),
        ] {
            let error = RegistryOptions::from_settings(settings(&[(name, value)])).unwrap_err();
            let expected = if name == "budget" { "options" } else { name };
            assert_eq!(error.param(), Some(expected), "{error}");
        }
    }

    #[test]
    fn bad_registration_values_name_their_field() {
        let error =
            ModelSpec::from_settings("m", "m.gguf", settings(&[("keep_alive", OptionValue::Bool(true))])).unwrap_err();
        assert_eq!(error.param(), Some("keep_alive"), "{error}");
        let error =
            ModelSpec::from_settings("m", "m.gguf", settings(&[("embedding", OptionValue::Int(1))])).unwrap_err();
        assert_eq!(error.param(), Some("embedding"), "{error}");
        let error =
            ModelSpec::from_settings("m", "m.gguf", settings(&[("max_runing", OptionValue::Int(1))])).unwrap_err();
        assert!(error.to_string().contains("unknown setting `max_runing`"), "{error}");
    }
}
