//! What a registry knows about a model before loading it ([`ModelSpec`]), and what it hands
//! out once loaded ([`ServedModel`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::sequence::panic_message;
use crate::engine::{Embeddings, EngineConfig};
use crate::error::{Error, Result};
use crate::models::bert::BertEmbedder;
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
}

/// A sentence-embedding model served without a generation model.
pub struct EmbeddingModel {
    embedder: BertEmbedder,
    memory_bytes: u64,
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
        Ok(Self { embedder, memory_bytes: crate::memory::files_bytes(dir) })
    }

    pub fn embed(&self, texts: &[&str]) -> Result<Embeddings> {
        // A panic in the embedder is a bug, reported as an error (as `Engine::embed` does).
        let embedded =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.embedder.embed_counting_tokens(texts)))
                .map_err(|panic| Error::Internal(panic_message(&panic)))?;
        let (vectors, prompt_tokens) = embedded?;
        Ok(Embeddings { vectors, prompt_tokens })
    }

    pub fn dim(&self) -> usize {
        self.embedder.dim()
    }

    pub fn max_tokens(&self) -> usize {
        self.embedder.max_tokens()
    }
}
