//! Several models served by name, each loaded on first use (or at start) into its own
//! [`Engine`](crate::Engine), unloaded when idle past its keep-alive (Ollama semantics) or
//! least-recently-used first when a memory budget needs room.
//!
//! A request takes a [`ModelLease`] and holds it while it runs: the lease owns an `Arc` to the
//! model, so unloading (explicit, keep-alive or LRU) only drops the registry's reference and
//! never cuts a request in flight; the model is freed when its last lease ends. Keep-alive
//! counts from the moment the last lease ends, as Ollama counts from the end of the request.
//! Expiry is checked on every access and by one reaper thread that sleeps until the next
//! deadline (no polling).

mod keep_alive;
mod spec;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use crate::engine::ModelDescription;
use crate::error::Error;
use crate::options::OptionValue;
use crate::Engine;

pub use keep_alive::{KeepAlive, DEFAULT_KEEP_ALIVE};
pub use spec::{EmbeddingMetrics, EmbeddingModel, ModelMetrics, ModelSource, ModelSpec, ServedModel};

/// What can go wrong in a registry call. Converts into the core [`Error`] for the bindings.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("unknown model `{name}`; known models: {}", list_or_none(.known))]
    UnknownModel { name: String, known: Vec<String> },
    #[error("a model named `{0}` is already registered")]
    AlreadyRegistered(String),
    #[error("invalid model name `{name}`: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid value for `keep_alive` ({value:?}): {reason}")]
    InvalidKeepAlive { value: String, reason: &'static str },
    #[error("cannot load model `{name}`: {source}")]
    Load {
        name: String,
        #[source]
        source: Error,
    },
    #[error("the model registry is closed")]
    Closed,
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    }
}

impl From<RegistryError> for Error {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::UnknownModel { name, known } => {
                Error::ModelNotFound(format!("`{name}` (known models: {})", list_or_none(&known)))
            }
            RegistryError::AlreadyRegistered(_) | RegistryError::InvalidName { .. } => {
                Error::invalid("name", error.to_string())
            }
            RegistryError::InvalidKeepAlive { .. } => Error::invalid("keep_alive", error.to_string()),
            RegistryError::Load { source, .. } => source,
            RegistryError::Closed => Error::EngineClosed,
        }
    }
}

/// The time a registry runs on; tests substitute a clock they advance by hand.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The system's monotonic clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// How a registry manages memory and time.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Most bytes of loaded models ([`ServedModel::memory_bytes`]); idle models are unloaded,
    /// least recently used first, to make room. Models in use are never unloaded for it, so
    /// while every loaded model serves a request the total may exceed it. `None`: no budget.
    pub memory_budget_bytes: Option<u64>,
    /// Keep-alive of a model whose spec and request name none (default: 5 minutes).
    pub default_keep_alive: KeepAlive,
}

impl RegistryOptions {
    /// From a front door's map: `memory_budget_bytes` (a byte count, null for none) and
    /// `keep_alive` (see [`KeepAlive::from_value`]); nulls keep the defaults, an unknown name
    /// is refused by name.
    pub fn from_settings(settings: OptionValue) -> Result<Self, Error> {
        let entries = match settings {
            OptionValue::Null => Vec::new(),
            OptionValue::Map(entries) => entries,
            other => return Err(Error::invalid("options", format!("expected a map of options, got {}", other.kind()))),
        };
        let mut options = Self::default();
        for (key, value) in entries {
            match key.as_str() {
                "memory_budget_bytes" => {
                    options.memory_budget_bytes = Option::<u64>::deserialize(value)
                        .map_err(|e| Error::invalid("memory_budget_bytes", e.to_string()))?;
                }
                "keep_alive" => {
                    if let Some(keep_alive) = KeepAlive::from_value(&value)? {
                        options.default_keep_alive = keep_alive;
                    }
                }
                other => {
                    let shown: String = other.chars().take(40).collect();
                    return Err(Error::invalid(
                        "options",
                        format!("unknown registry option `{shown}`; the options are memory_budget_bytes, keep_alive"),
                    ));
                }
            }
        }
        Ok(options)
    }
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self { memory_budget_bytes: None, default_keep_alive: DEFAULT_KEEP_ALIVE }
    }
}

/// A loaded model, as [`Registry::loaded`] lists it.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub name: String,
    pub is_embedding: bool,
    pub memory_bytes: u64,
    /// Requests holding a lease on it now.
    pub active_requests: usize,
    /// When it will be unloaded if no request comes; `None`: never. While requests run it is
    /// the time it would expire if they all ended now.
    pub expires_at: Option<SystemTime>,
}

/// A model registered under a name, as [`Registry::registered`] lists it.
#[derive(Debug, Clone)]
pub struct RegisteredModel {
    pub spec: ModelSpec,
    pub loaded: bool,
}

/// Several models by name; see the module documentation. `Send + Sync`.
pub struct Registry {
    inner: Arc<Inner>,
    reaper: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("models", &self.inner.lock().specs.keys().collect::<Vec<_>>()).finish()
    }
}

struct Inner {
    state: Mutex<State>,
    /// Wakes the reaper when a deadline may have moved or the registry closes.
    changed: Condvar,
    clock: Arc<dyn Clock>,
    options: RegistryOptions,
}

#[derive(Default)]
struct State {
    specs: BTreeMap<String, Registered>,
    loaded: HashMap<String, Slot>,
    /// Increments on every load; a lease releases only the load it came from.
    next_load_id: u64,
    /// Every generation engine loaded and not yet freed (leases may outlive their slot), for
    /// [`Registry::shutdown`].
    engines: Vec<Weak<Engine>>,
    /// Increments on every use; the least recently used idle model has the smallest tick.
    tick: u64,
    closed: bool,
}

struct Registered {
    spec: ModelSpec,
    /// Serialises loads of this model (other models load in parallel).
    load_lock: Arc<Mutex<()>>,
    /// Size measured at the last load, the estimate for the next one.
    last_memory_bytes: Option<u64>,
}

struct Slot {
    model: ServedModel,
    load_id: u64,
    memory_bytes: u64,
    keep_alive: KeepAlive,
    active: usize,
    last_used: u64,
    /// When the last lease ended (`None` while leased).
    idle_since: Option<Instant>,
}

impl Slot {
    fn expires_at(&self, now: Instant) -> Option<Instant> {
        self.keep_alive.deadline(self.idle_since.unwrap_or(now))
    }

    fn is_expired(&self, now: Instant) -> bool {
        self.active == 0 && self.expires_at(now).is_some_and(|deadline| deadline <= now)
    }
}

/// A request's hold on a loaded model. The model stays usable while the lease lives, whatever
/// the registry does; dropping the lease starts the model's keep-alive countdown.
#[derive(Debug)]
pub struct ModelLease {
    model: ServedModel,
    name: String,
    load_id: u64,
    registry: Weak<Inner>,
}

impl ModelLease {
    pub fn model(&self) -> &ServedModel {
        &self.model
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::ops::Deref for ModelLease {
    type Target = ServedModel;
    fn deref(&self) -> &ServedModel {
        &self.model
    }
}

impl Drop for ModelLease {
    fn drop(&mut self) {
        if let Some(inner) = self.registry.upgrade() {
            let unloaded = inner.release(&self.name, self.load_id);
            // Shut the model down (if this was its end) outside the registry's lock.
            drop(unloaded);
        }
    }
}

impl Registry {
    /// An empty registry on the system clock, with a reaper thread that unloads expired models.
    pub fn new(options: RegistryOptions) -> Self {
        let registry = Self::with_clock(options, Arc::new(SystemClock));
        let inner = Arc::clone(&registry.inner);
        let reaper = std::thread::Builder::new()
            .name("cortexstream-registry-reaper".into())
            .spawn(move || inner.reap_until_closed())
            .ok();
        *registry.reaper.lock().unwrap_or_else(|e| e.into_inner()) = reaper;
        registry
    }

    /// An empty registry on `clock`, without a reaper thread: expiry happens on access and on
    /// [`reap`](Self::reap) (for tests, and for callers that drive expiry themselves).
    pub fn with_clock(options: RegistryOptions, clock: Arc<dyn Clock>) -> Self {
        let inner = Inner { state: Mutex::default(), changed: Condvar::new(), clock, options };
        Self { inner: Arc::new(inner), reaper: Mutex::new(None) }
    }

    /// Adds a model under its name (not loaded yet: see [`load`](Self::load)).
    pub fn register(&self, spec: ModelSpec) -> Result<(), RegistryError> {
        validate_name(&spec.name)?;
        let mut state = self.inner.lock();
        if state.specs.contains_key(&spec.name) {
            return Err(RegistryError::AlreadyRegistered(spec.name));
        }
        let registered = Registered { spec, load_lock: Arc::default(), last_memory_bytes: None };
        state.specs.insert(registered.spec.name.clone(), registered);
        Ok(())
    }

    /// Every registered model, by name.
    pub fn registered(&self) -> Vec<RegisteredModel> {
        let state = self.inner.lock();
        state
            .specs
            .values()
            .map(|r| RegisteredModel { spec: r.spec.clone(), loaded: state.loaded.contains_key(&r.spec.name) })
            .collect()
    }

    /// The model named `name`, loaded now if it is not; hold the lease while using it.
    /// `keep_alive` (a request's) replaces the model's keep-alive from now on, as in Ollama.
    pub fn get(&self, name: &str, keep_alive: Option<KeepAlive>) -> Result<ModelLease, RegistryError> {
        self.inner.get(name, keep_alive)
    }

    /// Loads `name` if needed and starts its keep-alive countdown (a preload).
    pub fn load(&self, name: &str, keep_alive: Option<KeepAlive>) -> Result<(), RegistryError> {
        self.get(name, keep_alive).map(drop)
    }

    /// Unloads `name` now: the registry forgets the loaded model, and requests holding a lease
    /// finish on it (it is freed when the last one ends). `Ok(false)`: it was not loaded.
    pub fn unload(&self, name: &str) -> Result<bool, RegistryError> {
        let removed = {
            let mut state = self.inner.lock();
            state.require_registered(name)?;
            state.loaded.remove(name)
        };
        self.inner.changed.notify_all();
        Ok(removed.is_some())
    }

    /// Forgets `name`: unloads it as [`unload`](Self::unload) does (requests holding a lease
    /// finish on it; it is freed when the last one ends) and removes its registration, so later
    /// requests for it fail with [`RegistryError::UnknownModel`]. A load of it under way ends
    /// serving its own request only. `false`: no model had that name.
    pub fn unregister(&self, name: &str) -> bool {
        let (registered, unloaded) = {
            let mut state = self.inner.lock();
            (state.specs.remove(name), state.loaded.remove(name))
        };
        self.inner.changed.notify_all();
        // Shut the model down (if idle) outside the registry's lock.
        drop(unloaded);
        registered.is_some()
    }

    /// The loaded models themselves, by name, without leasing them: reading them (metrics, say)
    /// neither restarts their keep-alive nor counts as a use for the LRU order.
    pub fn loaded_models(&self) -> Vec<(String, ServedModel)> {
        let state = self.inner.lock();
        let mut models: Vec<(String, ServedModel)> =
            state.loaded.iter().map(|(name, slot)| (name.clone(), slot.model.clone())).collect();
        models.sort_by(|a, b| a.0.cmp(&b.0));
        models
    }

    /// The counters of every loaded model (generation and embedding), sorted by name, read
    /// without touching their keep-alive (see [`loaded_models`](Self::loaded_models)). A model's
    /// counters start from zero each time it loads.
    pub fn metrics(&self) -> Vec<(String, ModelMetrics)> {
        self.loaded_models().into_iter().map(|(name, model)| (name, model.metrics())).collect()
    }

    /// The counters of the model `name`: `None` when it is registered but not loaded. Read as
    /// [`metrics`](Self::metrics) reads them (not a use).
    pub fn model_metrics(&self, name: &str) -> Result<Option<ModelMetrics>, RegistryError> {
        let state = self.inner.lock();
        if let Some(slot) = state.loaded.get(name) {
            return Ok(Some(slot.model.metrics()));
        }
        if state.specs.contains_key(name) {
            return Ok(None);
        }
        Err(RegistryError::UnknownModel { name: name.to_owned(), known: state.specs.keys().cloned().collect() })
    }

    /// What the generation model `name` is, for a model listing (Ollama's `/api/show`), without
    /// loading it: a loaded model's engine says (exact); one not loaded is read from its GGUF's
    /// metadata ([`ModelDescription::read`]), no weights touched. `None` for an embedding
    /// model. Not a use of the model.
    pub fn describe(&self, name: &str) -> crate::Result<Option<ModelDescription>> {
        let (spec, loaded) = {
            let state = self.inner.lock();
            let Some(registered) = state.specs.get(name) else {
                return Err(RegistryError::UnknownModel {
                    name: name.to_owned(),
                    known: state.specs.keys().cloned().collect(),
                }
                .into());
            };
            (registered.spec.clone(), state.loaded.get(name).map(|slot| slot.model.clone()))
        };
        if let Some(engine) = loaded.as_ref().and_then(ServedModel::engine) {
            return Ok(Some(ModelDescription::from(engine.model_info())));
        }
        match &spec.source {
            ModelSource::Generation(config) => ModelDescription::read(config).map(Some),
            ModelSource::Embedding { .. } => Ok(None),
        }
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.registered().into_iter().map(|registered| registered.spec.name).collect()
    }

    /// The loaded models (after unloading the expired ones), by name.
    pub fn loaded(&self) -> Vec<LoadedModel> {
        let (listed, expired) = {
            let mut state = self.inner.lock();
            let now = self.inner.clock.now();
            let expired = state.take_expired(now);
            let mut listed: Vec<LoadedModel> =
                state.loaded.iter().map(|(name, slot)| describe(name, slot, now)).collect();
            listed.sort_by(|a, b| a.name.cmp(&b.name));
            (listed, expired)
        };
        drop(expired);
        listed
    }

    /// Unloads the models idle past their keep-alive; returns their names.
    pub fn reap(&self) -> Vec<String> {
        let expired = self.inner.reap_now();
        expired.into_iter().map(|(name, _)| name).collect()
    }

    /// Sum of [`ServedModel::memory_bytes`] over the loaded models.
    pub fn memory_bytes(&self) -> u64 {
        self.inner.lock().loaded_bytes()
    }

    /// [`close`](Self::close), then shuts down every engine it loaded that a lease still holds,
    /// ending their running requests as cancelled (a server's shutdown after its drain time).
    pub fn shutdown(&self) {
        self.close();
        let engines: Vec<Weak<Engine>> = std::mem::take(&mut self.inner.lock().engines);
        for engine in engines.iter().filter_map(Weak::upgrade) {
            engine.shutdown();
        }
    }

    /// Unloads every model and stops the reaper; leased models finish their requests. Idempotent.
    pub fn close(&self) {
        let unloaded: Vec<Slot> = {
            let mut state = self.inner.lock();
            state.closed = true;
            state.loaded.drain().map(|(_, slot)| slot).collect()
        };
        self.inner.changed.notify_all();
        drop(unloaded);
        let reaper = self.reaper.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(reaper) = reaper {
            let _ = reaper.join();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.close();
    }
}

fn describe(name: &str, slot: &Slot, now: Instant) -> LoadedModel {
    // Instants have no calendar meaning; `expires_at` is placed relative to the wall clock.
    let expires_at = slot.expires_at(now).map(|deadline| SystemTime::now() + deadline.saturating_duration_since(now));
    LoadedModel {
        name: name.to_string(),
        is_embedding: slot.model.is_embedding(),
        memory_bytes: slot.memory_bytes,
        active_requests: slot.active,
        expires_at,
    }
}

/// Names are what requests put in `model`: non-empty, printable, no whitespace or slashes at
/// the ends, bounded.
fn validate_name(name: &str) -> Result<(), RegistryError> {
    let invalid = |reason| RegistryError::InvalidName { name: name.to_string(), reason };
    if name.trim().is_empty() {
        return Err(invalid("must not be empty"));
    }
    if name.len() > 256 {
        return Err(invalid("must be at most 256 bytes"));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid("must not contain whitespace or control characters"));
    }
    Ok(())
}

impl State {
    fn require_registered(&self, name: &str) -> Result<&Registered, RegistryError> {
        self.specs.get(name).ok_or_else(|| RegistryError::UnknownModel {
            name: name.to_string(),
            known: self.specs.keys().cloned().collect(),
        })
    }

    fn loaded_bytes(&self) -> u64 {
        self.loaded.values().map(|slot| slot.memory_bytes).sum()
    }

    fn take_expired(&mut self, now: Instant) -> Vec<(String, Slot)> {
        let names: Vec<String> =
            self.loaded.iter().filter(|(_, slot)| slot.is_expired(now)).map(|(name, _)| name.clone()).collect();
        names.into_iter().filter_map(|name| self.loaded.remove(&name).map(|slot| (name, slot))).collect()
    }

    /// Unloads idle models, least recently used first, until `needed` more bytes fit the
    /// budget (or no idle model is left). `keep` is never unloaded.
    fn make_room(&mut self, budget: Option<u64>, needed: u64, keep: &str) -> Vec<Slot> {
        let Some(budget) = budget else { return Vec::new() };
        let mut evicted = Vec::new();
        while self.loaded_bytes().saturating_add(needed) > budget {
            let victim = self
                .loaded
                .iter()
                .filter(|(name, slot)| slot.active == 0 && name.as_str() != keep)
                .min_by_key(|(_, slot)| slot.last_used)
                .map(|(name, _)| name.clone());
            match victim.and_then(|name| self.loaded.remove(&name)) {
                Some(slot) => evicted.push(slot),
                None => break,
            }
        }
        evicted
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Takes a lease on a loaded model, if `name` is loaded.
    fn lease(&mut self, name: &str, keep_alive: Option<KeepAlive>, registry: Weak<Inner>) -> Option<ModelLease> {
        let tick = self.next_tick();
        let slot = self.loaded.get_mut(name)?;
        slot.active += 1;
        slot.last_used = tick;
        slot.idle_since = None;
        if let Some(keep_alive) = keep_alive {
            slot.keep_alive = keep_alive;
        }
        Some(ModelLease { model: slot.model.clone(), name: name.to_string(), load_id: slot.load_id, registry })
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn weak(self: &Arc<Self>) -> Weak<Self> {
        Arc::downgrade(self)
    }

    fn get(self: &Arc<Self>, name: &str, keep_alive: Option<KeepAlive>) -> Result<ModelLease, RegistryError> {
        let (load_lock, expired) = {
            let mut state = self.lock();
            if state.closed {
                return Err(RegistryError::Closed);
            }
            let load_lock = Arc::clone(&state.require_registered(name)?.load_lock);
            // Expire on access: the other models idle past their keep-alive go now. The one
            // asked for is still in memory, so it is reused rather than reloaded.
            let mut expired = state.take_expired(self.clock.now());
            if let Some(index) = expired.iter().position(|(expired_name, _)| expired_name == name) {
                let (name, slot) = expired.swap_remove(index);
                state.loaded.insert(name, slot);
            }
            if let Some(lease) = state.lease(name, keep_alive, self.weak()) {
                return Ok(lease);
            }
            (load_lock, expired)
        };
        drop(expired);
        // One load per model at a time; whoever waited here finds it loaded.
        let _loading = load_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (spec, evicted) = {
            let mut state = self.lock();
            if state.closed {
                return Err(RegistryError::Closed);
            }
            if let Some(lease) = state.lease(name, keep_alive, self.weak()) {
                return Ok(lease);
            }
            let registered = state.require_registered(name)?;
            let spec = registered.spec.clone();
            let estimate = registered.last_memory_bytes.unwrap_or_else(|| spec.files_bytes());
            let evicted = state.make_room(self.options.memory_budget_bytes, estimate, name);
            (spec, evicted)
        };
        drop(evicted);
        let model = spec.load().map_err(|source| RegistryError::Load { name: name.to_string(), source })?;
        self.insert_loaded(name, &spec, &load_lock, model, keep_alive)
    }

    /// Records a freshly loaded model (leased once, by the caller) and makes room for it.
    fn insert_loaded(
        self: &Arc<Self>,
        name: &str,
        spec: &ModelSpec,
        load_lock: &Arc<Mutex<()>>,
        model: ServedModel,
        keep_alive: Option<KeepAlive>,
    ) -> Result<ModelLease, RegistryError> {
        let memory_bytes = model.memory_bytes();
        let (lease, evicted) = {
            let mut state = self.lock();
            if state.closed {
                return Err(RegistryError::Closed);
            }
            if let Some(engine) = model.engine() {
                state.engines.retain(|e| e.strong_count() > 0);
                state.engines.push(Arc::downgrade(engine));
            }
            // Unregistered (or replaced by a new registration) while it loaded: the request
            // that loaded it is served on it, and nothing else finds it.
            let Some(registered) = state.specs.get_mut(name).filter(|r| Arc::ptr_eq(&r.load_lock, load_lock)) else {
                return Ok(ModelLease { model, name: name.to_string(), load_id: 0, registry: Weak::new() });
            };
            registered.last_memory_bytes = Some(memory_bytes);
            state.next_load_id += 1;
            let slot = Slot {
                model,
                load_id: state.next_load_id,
                memory_bytes,
                keep_alive: spec.keep_alive.unwrap_or(self.options.default_keep_alive),
                active: 0,
                last_used: 0,
                idle_since: None,
            };
            state.loaded.insert(name.to_string(), slot);
            let lease = state.lease(name, keep_alive, self.weak());
            // Measured now; the estimate may have been low.
            let evicted = state.make_room(self.options.memory_budget_bytes, 0, name);
            (lease, evicted)
        };
        drop(evicted);
        self.changed.notify_all();
        lease.ok_or_else(|| RegistryError::Load {
            name: name.to_string(),
            source: Error::Internal("the model was unloaded while loading".into()),
        })
    }

    /// A lease ended: starts the keep-alive countdown of the model it came from (if that load is
    /// still the registered one), and unloads it now if its keep-alive is zero. Returns what to
    /// drop outside the lock.
    fn release(&self, name: &str, load_id: u64) -> Option<Slot> {
        let now = self.clock.now();
        let unloaded = {
            let mut state = self.lock();
            let tick = state.next_tick();
            let slot = state.loaded.get_mut(name).filter(|slot| slot.load_id == load_id)?;
            slot.active -= 1;
            slot.last_used = tick;
            if slot.active > 0 {
                return None;
            }
            slot.idle_since = Some(now);
            if slot.keep_alive.is_zero() {
                state.loaded.remove(name)
            } else {
                None
            }
        };
        self.changed.notify_all();
        unloaded
    }

    fn reap_now(&self) -> Vec<(String, Slot)> {
        let now = self.clock.now();
        let expired = self.lock().take_expired(now);
        expired
    }

    /// The reaper thread: unloads expired models, then sleeps until the next deadline or a
    /// change (a lease ending, a load, close).
    fn reap_until_closed(&self) {
        let mut state = self.lock();
        loop {
            if state.closed {
                return;
            }
            let now = self.clock.now();
            let expired = state.take_expired(now);
            if !expired.is_empty() {
                drop(state);
                drop(expired);
                state = self.lock();
                continue;
            }
            let next_deadline = state.loaded.values().filter(|s| s.active == 0).filter_map(|s| s.expires_at(now)).min();
            state = match next_deadline {
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(now).max(Duration::from_millis(1));
                    self.changed.wait_timeout(state, wait).unwrap_or_else(|e| e.into_inner()).0
                }
                None => self.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}
