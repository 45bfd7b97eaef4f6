//! `NativeRegistry` and `NativeLease`: the core's model registry as JavaScript classes.
//! `lib/registry.js` wraps them in the public `Registry`. Loading and unloading (which joins an
//! engine's thread) run on the libuv thread pool; all registry logic is the core's.

use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use cortexstream::registry::{KeepAlive, ModelLease, ModelSpec, RegistryOptions, ServedModel};
use cortexstream::{Embeddings, Error, OptionValue, Registry};
use napi::bindgen_prelude::{AsyncTask, Env, Task, Unknown};
use napi_derive::napi;

use crate::engine::NativeEngine;
use crate::errors::to_js_error;
use crate::naming::camel_case_keys;
use crate::options::{option_value, snake_case_entries};

/// Several models by name, each its own engine, loaded on first use.
#[napi]
pub struct NativeRegistry {
    registry: Arc<Registry>,
}

/// A loaded model as `loaded()` lists it.
#[napi(object)]
pub struct LoadedModel {
    pub name: String,
    pub is_embedding: bool,
    pub memory_bytes: f64,
    pub active_requests: u32,
    /// Milliseconds since the Unix epoch when it unloads if unused; `null`: never.
    pub expires_at: Option<f64>,
}

/// A keep-alive argument: seconds (negative: forever) or a duration string; null: none.
fn keep_alive(value: Option<Unknown<'_>>) -> napi::Result<Result<Option<KeepAlive>, Error>> {
    let Some(value) = value else { return Ok(Ok(None)) };
    Ok(KeepAlive::from_value(&option_value(&value)?).map_err(Error::from))
}

#[napi]
impl NativeRegistry {
    /// `{ memoryBudgetBytes, keepAlive }`, both optional.
    #[napi(constructor)]
    pub fn new(env: Env, options: Option<Unknown<'_>>) -> napi::Result<Self> {
        let entries = match options {
            None => Ok(Vec::new()),
            Some(options) => snake_case_entries(&options)?,
        };
        let options = entries.and_then(|entries| RegistryOptions::from_settings(OptionValue::Map(entries)));
        let options = options.map_err(|e| to_js_error(&env, e))?;
        Ok(Self { registry: Arc::new(Registry::new(options)) })
    }

    /// Registers `model` (a GGUF file, or with `embedding: true` a sentence-transformers folder)
    /// under `name`, with `keepAlive` and engine settings (camelCase); loads nothing yet.
    #[napi]
    pub fn register(&self, env: Env, name: String, model: String, options: Option<Unknown<'_>>) -> napi::Result<()> {
        let entries = match options {
            None => Ok(Vec::new()),
            Some(options) => snake_case_entries(&options)?,
        };
        let spec = entries.and_then(|entries| ModelSpec::from_settings(name, model, OptionValue::Map(entries)));
        spec.and_then(|spec| self.registry.register(spec).map_err(Error::from)).map_err(|e| to_js_error(&env, e))
    }

    /// The registered names, sorted.
    #[napi]
    pub fn names(&self) -> Vec<String> {
        self.registry.names()
    }

    /// Forgets `name` (on the thread pool: unloading an idle model joins its engine thread);
    /// leased requests finish first. Resolves to whether it was registered.
    #[napi(ts_return_type = "Promise<boolean>")]
    pub fn unregister(&self, name: String) -> AsyncTask<UnregisterTask> {
        AsyncTask::new(UnregisterTask { registry: Arc::clone(&self.registry), name })
    }

    /// The counters of every loaded model by name (the core's `Registry::metrics`), keys in
    /// camelCase: an engine's metrics, or an embedding model's `embeddingRequests` and
    /// `embeddingTokensTotal`. Reading them is not a use of the models.
    #[napi]
    pub fn metrics(&self) -> napi::Result<serde_json::Value> {
        let mut by_name = serde_json::Map::new();
        for (name, metrics) in self.registry.metrics() {
            by_name.insert(name, camel_case_keys(serde_json::to_value(metrics)?));
        }
        Ok(serde_json::Value::Object(by_name))
    }

    /// `close()`, then ends (as cancelled) the requests still running on leased models.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn shutdown(&self) -> AsyncTask<ShutdownRegistryTask> {
        AsyncTask::new(ShutdownRegistryTask { registry: Arc::clone(&self.registry) })
    }

    /// The model `name`, loaded if needed (on the thread pool); resolves to a lease.
    #[napi(ts_return_type = "Promise<NativeLease>")]
    pub fn get(&self, env: Env, name: String, keep_alive: Option<Unknown<'_>>) -> napi::Result<AsyncTask<GetTask>> {
        let keep_alive = self::keep_alive(keep_alive)?.map_err(|e| to_js_error(&env, e))?;
        Ok(AsyncTask::new(GetTask { registry: Arc::clone(&self.registry), name, keep_alive }))
    }

    /// Unloads `name` now (leased requests finish first); resolves to whether it was loaded.
    #[napi(ts_return_type = "Promise<boolean>")]
    pub fn unload(&self, name: String) -> AsyncTask<UnloadTask> {
        AsyncTask::new(UnloadTask { registry: Arc::clone(&self.registry), name })
    }

    /// The loaded models, by name, after unloading the expired ones.
    #[napi]
    pub fn loaded(&self) -> Vec<LoadedModel> {
        self.registry.loaded().into_iter().map(LoadedModel::from).collect()
    }

    /// Unloads every model (on the thread pool); later `get`s fail with `engine_closed`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close(&self) -> AsyncTask<CloseRegistryTask> {
        AsyncTask::new(CloseRegistryTask { registry: Arc::clone(&self.registry) })
    }
}

impl From<cortexstream::registry::LoadedModel> for LoadedModel {
    fn from(model: cortexstream::registry::LoadedModel) -> Self {
        let expires_at =
            model.expires_at.map(|at| at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64() * 1000.0);
        Self {
            name: model.name,
            is_embedding: model.is_embedding,
            memory_bytes: model.memory_bytes as f64,
            active_requests: u32::try_from(model.active_requests).unwrap_or(u32::MAX),
            expires_at,
        }
    }
}

/// A hold on one registry model: it stays loaded (and its requests run) until `release()`.
#[napi]
pub struct NativeLease {
    lease: Arc<Mutex<Option<ModelLease>>>,
    name: String,
    is_embedding: bool,
}

impl NativeLease {
    fn served(&self) -> Result<ServedModel, Error> {
        let lease = self.lease.lock().unwrap_or_else(|e| e.into_inner());
        lease.as_ref().map(|l| l.model().clone()).ok_or(Error::EngineClosed)
    }
}

#[napi]
impl NativeLease {
    #[napi(getter)]
    pub fn name(&self) -> String {
        self.name.clone()
    }

    #[napi(getter)]
    pub fn is_embedding(&self) -> bool {
        self.is_embedding
    }

    /// The generation engine (its `close()` leaves the model to the registry); `null` for an
    /// embedding model. Fails with `engine_closed` after `release()`.
    #[napi]
    pub fn engine(&self, env: Env) -> napi::Result<Option<NativeEngine>> {
        let served = self.served().map_err(|e| to_js_error(&env, e))?;
        Ok(served.engine().cloned().map(NativeEngine::lent))
    }

    /// Unit-length embedding vectors, one per text (on the thread pool).
    #[napi(ts_return_type = "Promise<number[][]>")]
    pub fn embed(&self, env: Env, texts: Vec<String>) -> napi::Result<AsyncTask<LeaseEmbedTask>> {
        let model = self.served().map_err(|e| to_js_error(&env, e))?;
        Ok(AsyncTask::new(LeaseEmbedTask { model, texts }))
    }

    /// Ends the hold (on the thread pool: it may unload the model); idempotent.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn release(&self) -> AsyncTask<ReleaseTask> {
        AsyncTask::new(ReleaseTask { lease: Arc::clone(&self.lease) })
    }
}

/// `registry.get(name, keepAlive)`: loading takes a while.
pub struct GetTask {
    registry: Arc<Registry>,
    name: String,
    keep_alive: Option<KeepAlive>,
}

impl Task for GetTask {
    type Output = Result<ModelLease, Error>;
    type JsValue = NativeLease;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(self.registry.get(&self.name, self.keep_alive).map_err(Error::from))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<NativeLease> {
        let lease = output.map_err(|e| to_js_error(&env, e))?;
        Ok(NativeLease {
            name: lease.name().to_string(),
            is_embedding: lease.is_embedding(),
            lease: Arc::new(Mutex::new(Some(lease))),
        })
    }
}

/// `registry.unload(name)`: dropping an idle engine joins its thread.
pub struct UnloadTask {
    registry: Arc<Registry>,
    name: String,
}

impl Task for UnloadTask {
    type Output = Result<bool, Error>;
    type JsValue = bool;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(self.registry.unload(&self.name).map_err(Error::from))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<bool> {
        output.map_err(|e| to_js_error(&env, e))
    }
}

/// `registry.unregister(name)`: dropping an idle engine joins its thread.
pub struct UnregisterTask {
    registry: Arc<Registry>,
    name: String,
}

impl Task for UnregisterTask {
    type Output = bool;
    type JsValue = bool;

    fn compute(&mut self) -> napi::Result<bool> {
        Ok(self.registry.unregister(&self.name))
    }

    fn resolve(&mut self, _env: Env, output: bool) -> napi::Result<bool> {
        Ok(output)
    }
}

/// `registry.shutdown()`: joins every engine thread.
pub struct ShutdownRegistryTask {
    registry: Arc<Registry>,
}

impl Task for ShutdownRegistryTask {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<()> {
        self.registry.shutdown();
        Ok(())
    }

    fn resolve(&mut self, _env: Env, _output: ()) -> napi::Result<()> {
        Ok(())
    }
}

/// `registry.close()`.
pub struct CloseRegistryTask {
    registry: Arc<Registry>,
}

impl Task for CloseRegistryTask {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<()> {
        self.registry.close();
        Ok(())
    }

    fn resolve(&mut self, _env: Env, _output: ()) -> napi::Result<()> {
        Ok(())
    }
}

/// `lease.release()`: with keep-alive 0 this unloads the model.
pub struct ReleaseTask {
    lease: Arc<Mutex<Option<ModelLease>>>,
}

impl Task for ReleaseTask {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<()> {
        let lease = self.lease.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(lease);
        Ok(())
    }

    fn resolve(&mut self, _env: Env, _output: ()) -> napi::Result<()> {
        Ok(())
    }
}

/// `lease.embed(texts)`, with the registry's embedding model or the engine's.
pub struct LeaseEmbedTask {
    model: ServedModel,
    texts: Vec<String>,
}

impl Task for LeaseEmbedTask {
    type Output = Result<Embeddings, Error>;
    type JsValue = Vec<Vec<f32>>;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let texts: Vec<&str> = self.texts.iter().map(String::as_str).collect();
        Ok(self.model.embed(&texts))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        output.map(|embeddings| embeddings.vectors).map_err(|e| to_js_error(&env, e))
    }
}
