//! `cs_registry` and `cs_lease`: the core's model registry (several models by name, loaded on
//! first use, unloaded after their keep-alive or least recently used first) behind C handles.
//! All registry logic is the core's; this converts arguments and hands out handles.

use std::ffi::{c_char, CString};
use std::mem::size_of;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use cortexstream::registry::{KeepAlive, LoadedModel, ModelLease, ModelSpec, RegistryOptions};
use cortexstream::{Error, OptionValue, Registry};

use crate::args::{c_str, check_out, optional_c_str, read_sized, require, write_sized, SizedParams};
use crate::engine::{cs_engine, embed_into};
use crate::metrics::cs_metrics;
use crate::params::cs_engine_params;
use crate::status::{cs_status, guard, Failure};
use crate::text::to_c_string;

/// Several models by name, each its own engine. Get one from `cs_registry_new`, free it with
/// `cs_registry_free`.
///
/// Thread-safety: every function taking a `cs_registry*` may be called from any thread,
/// concurrently, except `cs_registry_free`, which must be the last call on it.
#[allow(non_camel_case_types)]
pub struct cs_registry {
    registry: Registry,
}

/// A hold on one loaded model (from `cs_registry_get`): the model stays loaded, and the
/// `cs_engine*` of `cs_lease_engine` valid, until `cs_registry_release`. A lease may outlive
/// its registry (the model is freed when the lease is released).
///
/// Thread-safety: `cs_lease_engine` from any thread; `cs_registry_release` must be the last
/// call on the lease.
#[allow(non_camel_case_types)]
pub struct cs_lease {
    /// The lent engine; `None` for an embedding model. Dropped before the lease, so the
    /// registry's keep-alive countdown starts with no handle left on the model.
    engine: Option<Box<cs_engine>>,
    lease: ModelLease,
}

/// How a registry manages memory and time. Get one from `cs_registry_default_params()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct cs_registry_params {
    /// `sizeof(cs_registry_params)` as the caller was compiled; set by `cs_registry_default_params()`.
    pub struct_size: usize,
    /// Most bytes of loaded models: loading another unloads idle ones, least recently used
    /// first (models in use are never unloaded for it). 0: no budget (the default).
    pub memory_budget_bytes: u64,
    /// Keep-alive of a model whose registration and request give none, as Ollama spells it:
    /// seconds (`"300"`, `"-1"` forever, `"0"` unload when idle) or a duration (`"5m"`, `"1h30m"`);
    /// NULL: 5 minutes. Borrowed only during `cs_registry_new`.
    pub keep_alive: *const c_char,
}

impl SizedParams for cs_registry_params {
    const BOOL_FIELDS: &'static [(usize, &'static str)] = &[];
}

/// One loaded model, as `cs_loaded_models_get` describes it. The caller sets
/// `struct_size = sizeof(cs_loaded_model)` first; fields are only ever appended, so a caller
/// built against an older header gets the fields it knows.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct cs_loaded_model {
    /// `sizeof(cs_loaded_model)` as the caller was compiled; only that many bytes are written.
    pub struct_size: usize,
    /// Its registered name (lent by the list; valid until `cs_loaded_models_free`).
    pub name: *const c_char,
    /// An embedding model (no `cs_engine`).
    pub is_embedding: bool,
    /// Memory the loaded model holds (weights and KV cache).
    pub memory_bytes: u64,
    /// Leases held on it now.
    pub active_requests: usize,
    /// When it unloads if no request comes, in milliseconds since the Unix epoch; -1: never.
    pub expires_at_ms: i64,
}

/// The loaded models, by name (from `cs_registry_loaded`): read them with
/// `cs_loaded_models_len` and `cs_loaded_models_get`, free the list with `cs_loaded_models_free`.
/// Opaque, so that `cs_loaded_model` can grow: the library never hands out an array whose
/// stride a caller compiled against an older header would get wrong.
///
/// Thread-safety: immutable; any thread may read it, `cs_loaded_models_free` must be the last call.
#[allow(non_camel_case_types)]
pub struct cs_loaded_models {
    entries: Vec<cs_loaded_model>,
    /// The C strings `entries` point into.
    _names: Vec<CString>,
}

/// Registry params at their defaults: no memory budget, keep-alive 5 minutes.
///
/// Thread-safety: any thread.
#[no_mangle]
pub extern "C" fn cs_registry_default_params() -> cs_registry_params {
    cs_registry_params {
        struct_size: std::mem::size_of::<cs_registry_params>(),
        memory_budget_bytes: 0,
        keep_alive: std::ptr::null(),
    }
}

/// A keep-alive string as the core's value (NULL: none).
///
/// # Safety
/// `text` must be NULL or NUL-terminated.
unsafe fn keep_alive_value(text: *const c_char) -> Result<OptionValue, Failure> {
    // SAFETY: forwarded caller contract.
    let text = unsafe { optional_c_str(text, "keep_alive")? };
    Ok(text.map_or(OptionValue::Null, |text| OptionValue::Str(text.to_owned())))
}

/// A keep-alive string as the core's keep-alive (NULL: none).
///
/// # Safety
/// `text` must be NULL or NUL-terminated.
unsafe fn keep_alive(text: *const c_char) -> Result<Option<KeepAlive>, Failure> {
    // SAFETY: forwarded caller contract.
    let value = unsafe { keep_alive_value(text)? };
    KeepAlive::from_value(&value).map_err(|e| Failure::from(Error::from(e)))
}

/// # Safety
/// A non-NULL `registry` must come from `cs_registry_new` and not have been freed.
unsafe fn registry_ref<'a>(registry: *const cs_registry) -> Result<&'a Registry, Failure> {
    // SAFETY: forwarded caller contract.
    Ok(&unsafe { require(registry, "registry")? }.registry)
}

/// Creates an empty registry (NULL `params`: the defaults) and its keep-alive thread.
///
/// On success `*out_registry` receives it; free it with `cs_registry_free`. Errors:
/// CS_INVALID_ARGUMENT naming `keep_alive`.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_registry_new(
    params: *const cs_registry_params,
    out_registry: *mut *mut cs_registry,
) -> cs_status {
    guard(|| {
        let params = if params.is_null() {
            cs_registry_default_params()
        } else {
            // SAFETY: forwarded caller contract (documented above).
            unsafe { read_sized(params, cs_registry_default_params(), "params")? }
        };
        check_out(out_registry, "out_registry")?;
        let budget = match params.memory_budget_bytes {
            0 => OptionValue::Null,
            bytes => OptionValue::Int(bytes.into()),
        };
        // SAFETY: forwarded caller contract.
        let keep_alive = unsafe { keep_alive_value(params.keep_alive)? };
        let value =
            OptionValue::Map(vec![("memory_budget_bytes".to_owned(), budget), ("keep_alive".to_owned(), keep_alive)]);
        let registry = Registry::new(RegistryOptions::from_settings(value)?);
        // SAFETY: checked non-NULL above.
        unsafe { out_registry.write(Box::into_raw(Box::new(cs_registry { registry }))) };
        Ok(())
    })
}

/// Unloads every model and frees the registry. Leases still held stay valid (their models are
/// freed when they are released). NULL returns CS_INVALID_ARGUMENT.
///
/// Thread-safety: no other call on this registry may run or start concurrently.
#[no_mangle]
pub unsafe extern "C" fn cs_registry_free(registry: *mut cs_registry) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract (documented above).
        unsafe { registry_ref(registry)? };
        // SAFETY: `registry` came from cs_registry_new and is freed once, by the contract.
        drop(unsafe { Box::from_raw(registry) });
        Ok(())
    })
}

/// Registers the generation model `params->model_path` under `name` with the engine settings
/// of `params` (from `cs_engine_default_params()`), and its own `keep_alive` (as in
/// `cs_registry_params`; NULL: the registry's). Loads nothing yet; a bad setting fails now
/// with CS_INVALID_ARGUMENT naming it, a taken or malformed name with one naming `name`.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_registry_register(
    registry: *const cs_registry,
    name: *const c_char,
    params: *const cs_engine_params,
    keep_alive: *const c_char,
) -> cs_status {
    guard(|| {
        // SAFETY (all): forwarded caller contract (documented above).
        let registry = unsafe { registry_ref(registry)? };
        let name = unsafe { c_str(name, "name")? };
        let params = unsafe { read_sized(params, crate::params::cs_engine_default_params(), "params")? };
        let model = unsafe { c_str(params.model_path, "model_path")? };
        let mut entries: Vec<(String, OptionValue)> =
            unsafe { params.settings()? }.into_iter().map(|(key, value)| (key.to_owned(), value)).collect();
        entries.push(("keep_alive".to_owned(), unsafe { keep_alive_value(keep_alive)? }));
        let spec = ModelSpec::from_settings(name, model, OptionValue::Map(entries))?;
        registry.register(spec).map_err(Error::from)?;
        Ok(())
    })
}

/// Registers a sentence-transformers folder `dir` as the embedding model `name` (served on its
/// own: its lease has no `cs_engine`), computing on `threads` threads (0: one per physical
/// core), with its own `keep_alive` (NULL: the registry's). Otherwise as `cs_registry_register`.
#[no_mangle]
pub unsafe extern "C" fn cs_registry_register_embedding(
    registry: *const cs_registry,
    name: *const c_char,
    dir: *const c_char,
    threads: usize,
    keep_alive: *const c_char,
) -> cs_status {
    guard(|| {
        // SAFETY (all): forwarded caller contract (documented above).
        let registry = unsafe { registry_ref(registry)? };
        let name = unsafe { c_str(name, "name")? };
        let dir = unsafe { c_str(dir, "dir")? };
        let threads = if threads == 0 { OptionValue::Null } else { OptionValue::Int(threads as i128) };
        let entries = vec![
            ("embedding".to_owned(), OptionValue::Bool(true)),
            ("threads".to_owned(), threads),
            ("keep_alive".to_owned(), unsafe { keep_alive_value(keep_alive)? }),
        ];
        let spec = ModelSpec::from_settings(name, dir, OptionValue::Map(entries))?;
        registry.register(spec).map_err(Error::from)?;
        Ok(())
    })
}

/// The model `name`, loaded now if it is not (this call then takes as long as loading).
/// `keep_alive` (as in `cs_registry_params`; NULL: unchanged) becomes the model's from now on.
/// On success `*out_lease` receives a lease; release it with `cs_registry_release` exactly once.
/// Errors: CS_MODEL_NOT_FOUND naming the model and the known ones, CS_INVALID_ARGUMENT naming
/// `keep_alive`, the load's errors (CS_MODEL_LOAD, CS_IO, ...), CS_ENGINE_CLOSED.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_registry_get(
    registry: *const cs_registry,
    name: *const c_char,
    keep_alive: *const c_char,
    out_lease: *mut *mut cs_lease,
) -> cs_status {
    guard(|| {
        // SAFETY (all): forwarded caller contract (documented above).
        let registry = unsafe { registry_ref(registry)? };
        let name = unsafe { c_str(name, "name")? };
        let keep_alive = unsafe { self::keep_alive(keep_alive)? };
        check_out(out_lease, "out_lease")?;
        let lease = registry.get(name, keep_alive).map_err(Error::from)?;
        let engine = lease.engine().map(|engine| Box::new(cs_engine::lent(Arc::clone(engine))));
        // SAFETY: checked non-NULL above.
        unsafe { out_lease.write(Box::into_raw(Box::new(cs_lease { engine, lease }))) };
        Ok(())
    })
}

/// Writes the leased model's engine to `*out_engine`: a `cs_engine*` for every `cs_engine_*`
/// call, valid until `cs_registry_release(lease)`; never pass it to `cs_engine_free`.
/// An embedding model has none: CS_INVALID_ARGUMENT naming `lease`.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_lease_engine(lease: *const cs_lease, out_engine: *mut *mut cs_engine) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract (documented above).
        let lease = unsafe { require(lease, "lease")? };
        check_out(out_engine, "out_engine")?;
        let engine = lease.engine.as_deref().ok_or_else(|| {
            Failure::invalid("lease", format!("`{}` is an embedding model and has no engine", lease.lease.name()))
        })?;
        // SAFETY: checked non-NULL above. The engine is only used through shared references.
        unsafe { out_engine.write(std::ptr::from_ref(engine).cast_mut()) };
        Ok(())
    })
}

/// Writes to `*out_dim` the length of the vectors `cs_lease_embed` returns for this lease.
/// Errors: CS_NO_EMBEDDING_MODEL for a generation model loaded without one.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_lease_embedding_dim(lease: *const cs_lease, out_dim: *mut usize) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract (documented above).
        let lease = unsafe { require(lease, "lease")? };
        check_out(out_dim, "out_dim")?;
        let dim = lease.lease.embedding_dim().ok_or(Error::NoEmbeddingModel)?;
        // SAFETY: checked non-NULL above.
        unsafe { out_dim.write(dim) };
        Ok(())
    })
}

/// Embeds `texts_len` NUL-terminated UTF-8 strings with the leased model: an embedding model
/// (`cs_registry_register_embedding`), or a generation model's own embedding model. As
/// `cs_engine_embed`: vector i (L2-normalised, `dim` floats) goes to `out_vectors[i * dim ...]`,
/// which must hold `texts_len * dim` floats (get `dim` from `cs_lease_embedding_dim`), checked
/// before any work (CS_INVALID_ARGUMENT naming `out_vectors`, stating the needed size), and
/// `dim` to `*out_dim`. Errors also: CS_NO_EMBEDDING_MODEL.
/// Thread-safety: any thread, concurrently.
#[no_mangle]
pub unsafe extern "C" fn cs_lease_embed(
    lease: *const cs_lease,
    texts: *const *const c_char,
    texts_len: usize,
    out_vectors: *mut f32,
    out_vectors_len: usize,
    out_dim: *mut usize,
) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract (documented above).
        let lease = unsafe { require(lease, "lease")? };
        let model = lease.lease.model();
        // SAFETY: forwarded caller contract (documented above).
        unsafe {
            embed_into(
                texts,
                texts_len,
                model.embedding_dim(),
                |texts| model.embed(texts),
                out_vectors,
                out_vectors_len,
                out_dim,
            )
        }
    })
}

/// Ends the hold and frees the lease (and the `cs_engine*` it lent): the model's keep-alive
/// countdown starts (keep-alive 0 unloads it now, which waits for its engine thread). Requests
/// submitted through the lent engine must be finished or freed first. NULL returns
/// CS_INVALID_ARGUMENT.
/// Thread-safety: must be the last call on the lease; not from inside an event callback.
#[no_mangle]
pub unsafe extern "C" fn cs_registry_release(lease: *mut cs_lease) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract (documented above).
        unsafe { require(lease, "lease")? };
        // SAFETY: `lease` came from cs_registry_get and is released once, by the contract.
        let lease = unsafe { Box::from_raw(lease) };
        let cs_lease { engine, lease } = *lease;
        drop(engine);
        drop(lease);
        Ok(())
    })
}

/// Unloads `name` now: requests holding a lease finish on it first. Writes to `*out_was_loaded`
/// whether it was loaded. Errors: CS_MODEL_NOT_FOUND.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_registry_unload(
    registry: *const cs_registry,
    name: *const c_char,
    out_was_loaded: *mut bool,
) -> cs_status {
    guard(|| {
        // SAFETY (both): forwarded caller contract (documented above).
        let registry = unsafe { registry_ref(registry)? };
        let name = unsafe { c_str(name, "name")? };
        check_out(out_was_loaded, "out_was_loaded")?;
        let was_loaded = registry.unload(name).map_err(Error::from)?;
        // SAFETY: checked non-NULL above.
        unsafe { out_was_loaded.write(was_loaded) };
        Ok(())
    })
}

/// Forgets `name`: later `cs_registry_get`s fail with CS_MODEL_NOT_FOUND; requests holding a
/// lease on it finish first, then it is freed (an idle model is freed now, joining its engine
/// thread). Writes to `*out_was_registered` whether a model had that name.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_registry_unregister(
    registry: *const cs_registry,
    name: *const c_char,
    out_was_registered: *mut bool,
) -> cs_status {
    guard(|| {
        // SAFETY (both): forwarded caller contract (documented above).
        let registry = unsafe { registry_ref(registry)? };
        let name = unsafe { c_str(name, "name")? };
        check_out(out_was_registered, "out_was_registered")?;
        let was_registered = registry.unregister(name);
        // SAFETY: checked non-NULL above.
        unsafe { out_was_registered.write(was_registered) };
        Ok(())
    })
}

/// Copies the counters of the model `name` into `*out_metrics` (set `out_metrics->struct_size =
/// sizeof(cs_metrics)` first; only that many bytes are written) when it is loaded, and writes to
/// `*out_loaded` whether it is (not loaded: `*out_metrics` is left alone). A generation model's
/// are its engine's (`cs_engine_metrics`); an embedding model's are `embedding_requests` and
/// `embedding_tokens_total`, every other field 0. Reading them neither restarts the model's
/// keep-alive nor counts as a use; they start from zero each time it loads. Errors:
/// CS_MODEL_NOT_FOUND for a name not registered; CS_INVALID_ARGUMENT for a NULL argument or a
/// bad `struct_size`.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_registry_metrics(
    registry: *const cs_registry,
    name: *const c_char,
    out_metrics: *mut cs_metrics,
    out_loaded: *mut bool,
) -> cs_status {
    guard(|| {
        // SAFETY (both): forwarded caller contract (documented above).
        let registry = unsafe { registry_ref(registry)? };
        let name = unsafe { c_str(name, "name")? };
        check_out(out_metrics, "out_metrics")?;
        check_out(out_loaded, "out_loaded")?;
        let metrics = registry.model_metrics(name).map_err(Error::from)?;
        if let Some(metrics) = &metrics {
            // SAFETY: forwarded caller contract (documented above).
            unsafe { write_sized(out_metrics, cs_metrics::from(metrics), "out_metrics")? };
        }
        // SAFETY: checked non-NULL above.
        unsafe { out_loaded.write(metrics.is_some()) };
        Ok(())
    })
}

/// The registered names, sorted. On success `*out_names` receives a list (see `cs_names`); free
/// it with `cs_names_free`.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_registry_names(registry: *const cs_registry, out_names: *mut *mut cs_names) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract (documented above).
        let registry = unsafe { registry_ref(registry)? };
        check_out(out_names, "out_names")?;
        let names = cs_names { names: registry.names().iter().map(|name| to_c_string(name)).collect() };
        // SAFETY: checked non-NULL above.
        unsafe { out_names.write(Box::into_raw(Box::new(names))) };
        Ok(())
    })
}

/// Unloads every model as `cs_registry_free` does (later `cs_registry_get`s fail with
/// CS_ENGINE_CLOSED), then ends the requests still running on models a lease holds, as
/// CS_FINISH_CANCELLED (a daemon's shutdown after its drain time). Leases stay valid until
/// released; free the registry with `cs_registry_free` afterwards. Idempotent.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_registry_shutdown(registry: *const cs_registry) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract (documented above).
        let registry = unsafe { registry_ref(registry)? };
        registry.shutdown();
        Ok(())
    })
}

/// Names (from `cs_registry_names`): read them with `cs_names_len` and `cs_names_get`, free the
/// list with `cs_names_free`.
///
/// Thread-safety: immutable; any thread may read it, `cs_names_free` must be the last call.
#[allow(non_camel_case_types)]
pub struct cs_names {
    names: Vec<CString>,
}

/// Writes the number of names in `names` to `*out_len`.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_names_len(names: *const cs_names, out_len: *mut usize) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract (documented above).
        let names = unsafe { require(names, "names")? };
        check_out(out_len, "out_len")?;
        // SAFETY: checked non-NULL above.
        unsafe { out_len.write(names.names.len()) };
        Ok(())
    })
}

/// Writes to `*out_name` name `index` (below `cs_names_len`), NUL-terminated UTF-8 lent by the
/// list until `cs_names_free`. Errors: CS_INVALID_ARGUMENT naming `index` when out of range.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_names_get(names: *const cs_names, index: usize, out_name: *mut *const c_char) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract (documented above).
        let names = unsafe { require(names, "names")? };
        check_out(out_name, "out_name")?;
        let name = names.names.get(index).ok_or_else(|| {
            Failure::invalid("index", format!("`index` is {index}, but the list holds {} names", names.names.len()))
        })?;
        // SAFETY: checked non-NULL above.
        unsafe { out_name.write(name.as_ptr()) };
        Ok(())
    })
}

/// Frees a list from `cs_registry_names`. NULL is a no-op.
/// Thread-safety: any thread; once per list.
#[no_mangle]
pub unsafe extern "C" fn cs_names_free(names: *mut cs_names) {
    if names.is_null() {
        return;
    }
    // SAFETY: by the contract it came from cs_registry_names and is freed once. Dropping
    // CStrings cannot panic.
    drop(unsafe { Box::from_raw(names) });
}

/// The loaded models, by name, after unloading the expired ones. On success `*out_models`
/// receives a list (see `cs_loaded_models`); free it with `cs_loaded_models_free`.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_registry_loaded(
    registry: *const cs_registry,
    out_models: *mut *mut cs_loaded_models,
) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract (documented above).
        let registry = unsafe { registry_ref(registry)? };
        check_out(out_models, "out_models")?;
        let list = loaded_list(registry.loaded());
        // SAFETY: checked non-NULL above.
        unsafe { out_models.write(Box::into_raw(Box::new(list))) };
        Ok(())
    })
}

/// The core's loaded models as a C list; the strings live in the list beside the entries.
fn loaded_list(loaded: Vec<LoadedModel>) -> cs_loaded_models {
    let names: Vec<CString> = loaded.iter().map(|model| to_c_string(&model.name)).collect();
    let entries = loaded
        .iter()
        .zip(&names)
        .map(|(model, name)| cs_loaded_model {
            struct_size: size_of::<cs_loaded_model>(),
            name: name.as_ptr(),
            is_embedding: model.is_embedding,
            memory_bytes: model.memory_bytes,
            active_requests: model.active_requests,
            expires_at_ms: model.expires_at.map_or(-1, |at| {
                i64::try_from(at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(i64::MAX)
            }),
        })
        .collect();
    cs_loaded_models { entries, _names: names }
}

/// Writes the number of models in `models` to `*out_len`.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_loaded_models_len(models: *const cs_loaded_models, out_len: *mut usize) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract (documented above).
        let models = unsafe { require(models, "models")? };
        check_out(out_len, "out_len")?;
        // SAFETY: checked non-NULL above.
        unsafe { out_len.write(models.entries.len()) };
        Ok(())
    })
}

/// Describes model `index` (below `cs_loaded_models_len`) into `*out_model` (set
/// `out_model->struct_size = sizeof(cs_loaded_model)` first; only that many bytes are written).
/// Its `name` is lent by the list until `cs_loaded_models_free`. Errors: CS_INVALID_ARGUMENT
/// naming `index` when it is out of range, `out_model` for a bad `struct_size`.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_loaded_models_get(
    models: *const cs_loaded_models,
    index: usize,
    out_model: *mut cs_loaded_model,
) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract (documented above).
        let models = unsafe { require(models, "models")? };
        let entry = models.entries.get(index).ok_or_else(|| {
            Failure::invalid("index", format!("`index` is {index}, but the list holds {} models", models.entries.len()))
        })?;
        // SAFETY: forwarded caller contract (documented above).
        unsafe { write_sized(out_model, *entry, "out_model") }
    })
}

/// Frees a list from `cs_registry_loaded`. NULL is a no-op.
/// Thread-safety: any thread; once per list.
#[no_mangle]
pub unsafe extern "C" fn cs_loaded_models_free(models: *mut cs_loaded_models) {
    if models.is_null() {
        return;
    }
    // SAFETY: by the contract it came from cs_registry_loaded and is freed once. Dropping Vecs
    // of plain data and CStrings cannot panic.
    drop(unsafe { Box::from_raw(models) });
}
