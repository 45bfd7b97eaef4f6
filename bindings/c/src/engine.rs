//! `cs_engine`: create and free an engine, and the calls that run directly on it
//! (model info, tokenizer, chat template, embeddings).

use std::ffi::{c_char, CString};
use std::mem::size_of;
use std::ptr;
use std::sync::Arc;

use cortexstream::{ChatMessage, Engine, Error, ModelInfo};

use crate::args::{c_str, c_str_array, c_str_described, check_out, read_sized, require, slice, write_sized};
use crate::owned::{check_out_buffer, write_string, write_tokens};
use crate::params::cs_engine_params;
use crate::status::{cs_status, guard, Failure};
use crate::text::to_c_string;

/// An engine: one loaded model (plus an optional embedding model) and its scheduler thread.
///
/// Thread-safety: every function taking a `cs_engine*` may be called from any thread,
/// concurrently, except `cs_engine_free`, which must be the last call on it.
#[allow(non_camel_case_types)]
pub struct cs_engine {
    engine: Arc<Engine>,
    /// C copies of the model info strings, lent out by `cs_engine_model_info`.
    names: ModelNames,
    /// Lent by a registry lease (`cs_lease_engine`): the lease owns it, `cs_engine_free`
    /// refuses it.
    lent: bool,
}

struct ModelNames {
    name: CString,
    architecture: CString,
    embedding_name: Option<CString>,
}

impl ModelNames {
    fn of(info: &ModelInfo) -> Self {
        Self {
            name: to_c_string(&info.name),
            architecture: to_c_string(&info.architecture),
            embedding_name: info.embedding.as_ref().map(|e| to_c_string(&e.name)),
        }
    }
}

/// A chat message: both strings NUL-terminated UTF-8, borrowed only during the call.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct cs_chat_message {
    /// "system", "user", "assistant", ...
    pub role: *const c_char,
    /// The message text.
    pub content: *const c_char,
}

/// What the loaded models are. The caller sets `struct_size = sizeof(cs_model_info)` before
/// calling `cs_engine_model_info`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct cs_model_info {
    /// `sizeof(cs_model_info)` as the caller was compiled; only that many bytes are written.
    pub struct_size: usize,
    /// Model name from its metadata (lent; valid until `cs_engine_free`).
    pub name: *const c_char,
    /// Architecture, e.g. "llama" (lent; valid until `cs_engine_free`).
    pub architecture: *const c_char,
    /// Context window in tokens.
    pub context_length: usize,
    /// Vocabulary size; valid token ids are below it.
    pub vocab_size: usize,
    /// Beginning-of-sequence token id, or -1 if the model has none.
    pub bos_token_id: i64,
    /// End-of-sequence token id, or -1 if the model has none.
    pub eos_token_id: i64,
    /// Name of the embedding model (lent; valid until `cs_engine_free`), or NULL if none is loaded.
    pub embedding_model_name: *const c_char,
    /// Length of each embedding vector; 0 if no embedding model is loaded.
    pub embedding_dim: usize,
    /// Longest input the embedding model reads, in tokens; 0 if none is loaded.
    pub embedding_max_tokens: usize,
}

/// The engine behind a handle passed in by C.
///
/// # Safety
/// A non-NULL `engine` must come from `cs_engine_new` and not have been freed.
pub(crate) unsafe fn engine_ref<'a>(engine: *const cs_engine) -> Result<&'a cs_engine, Failure> {
    // SAFETY: forwarded caller contract.
    unsafe { require(engine, "engine") }
}

impl cs_engine {
    /// The core engine.
    pub(crate) fn core(&self) -> &Engine {
        &self.engine
    }

    /// A handle on a registry's engine, owned by the lease that lends it.
    pub(crate) fn lent(engine: Arc<Engine>) -> Self {
        let names = ModelNames::of(engine.model_info());
        Self { engine, names, lent: true }
    }
}

/// Loads the model(s) described by `params` and starts the engine thread.
///
/// On success `*out_engine` receives a new engine; free it with `cs_engine_free` exactly once.
/// `params` and its strings are only read during the call. Errors: CS_INVALID_ARGUMENT,
/// CS_MODEL_LOAD, CS_IO, CS_TOKENIZER.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_engine_new(params: *const cs_engine_params, out_engine: *mut *mut cs_engine) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract (documented above).
        let params = unsafe { read_sized(params, crate::params::cs_engine_default_params(), "params")? };
        check_out(out_engine, "out_engine")?;
        // SAFETY: the string fields are NULL or NUL-terminated by the caller's contract.
        let engine = Engine::new(unsafe { params.to_config()? })?;
        let names = ModelNames::of(engine.model_info());
        let engine = cs_engine { engine: Arc::new(engine), names, lent: false };
        // SAFETY: checked non-NULL above.
        unsafe { out_engine.write(Box::into_raw(Box::new(engine))) };
        Ok(())
    })
}

/// Shuts the engine down and frees it. Requests still queued or running end with
/// CS_FINISH_CANCELLED (their callbacks get the FINISHED event); returns only after the
/// engine thread has exited. `cs_request` handles stay valid and must still be freed.
///
/// Ownership: free each engine exactly once; the handle is invalid afterwards. NULL returns
/// CS_INVALID_ARGUMENT, and so does an engine lent by a registry lease (`cs_lease_engine`),
/// which `cs_registry_release` frees.
/// Thread-safety: no other call on this engine may run or start concurrently, and it must
/// not be called from inside an event callback (the callback runs on the engine thread,
/// which this call joins).
#[no_mangle]
pub unsafe extern "C" fn cs_engine_free(engine: *mut cs_engine) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract (documented above).
        if unsafe { engine_ref(engine)? }.lent {
            return Err(Failure::invalid(
                "engine",
                "this engine belongs to a registry lease: release the lease with cs_registry_release instead",
            ));
        }
        // SAFETY: `engine` came from cs_engine_new and is freed once, by the contract.
        let engine = unsafe { Box::from_raw(engine) };
        engine.engine.shutdown();
        Ok(())
    })
}

/// Describes the loaded models into `*out_info` (set `out_info->struct_size` first).
///
/// The strings in it are lent by the engine until `cs_engine_free`.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_engine_model_info(engine: *const cs_engine, out_info: *mut cs_model_info) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract.
        let engine = unsafe { engine_ref(engine)? };
        let info = engine.engine.model_info();
        let embedding = info.embedding.as_ref();
        let value = cs_model_info {
            struct_size: size_of::<cs_model_info>(),
            name: engine.names.name.as_ptr(),
            architecture: engine.names.architecture.as_ptr(),
            context_length: info.context_length,
            vocab_size: info.vocab_size,
            bos_token_id: info.bos_token_id.map_or(-1, i64::from),
            eos_token_id: info.eos_token_id.map_or(-1, i64::from),
            embedding_model_name: engine.names.embedding_name.as_ref().map_or(ptr::null(), |n| n.as_ptr()),
            embedding_dim: embedding.map_or(0, |e| e.dim),
            embedding_max_tokens: embedding.map_or(0, |e| e.max_tokens),
        };
        // SAFETY: forwarded caller contract.
        unsafe { write_sized(out_info, value, "out_info") }
    })
}

/// Tokenizes NUL-terminated UTF-8 `text`, adding the model's special tokens (e.g. BOS) if
/// `add_special_tokens`.
///
/// On success `*out_tokens` receives a library-owned array of `*out_tokens_len` ids; free it
/// with `cs_tokens_free` exactly once.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_engine_tokenize(
    engine: *const cs_engine,
    text: *const c_char,
    add_special_tokens: bool,
    out_tokens: *mut *mut u32,
    out_tokens_len: *mut usize,
) -> cs_status {
    guard(|| {
        // SAFETY (both): forwarded caller contract.
        let engine = unsafe { engine_ref(engine)? };
        let text = unsafe { c_str(text, "text")? };
        check_out_buffer(out_tokens, out_tokens_len, "out_tokens", "out_tokens_len")?;
        let tokens = engine.engine.tokenize(text, add_special_tokens)?;
        // SAFETY: both checked non-NULL above.
        unsafe { write_tokens(&tokens, out_tokens, out_tokens_len) };
        Ok(())
    })
}

/// Turns `tokens_len` token ids back into text.
///
/// On success `*out_text` receives a library-owned NUL-terminated UTF-8 string of
/// `*out_text_len` bytes; free it with `cs_string_free` exactly once.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_engine_detokenize(
    engine: *const cs_engine,
    tokens: *const u32,
    tokens_len: usize,
    out_text: *mut *mut c_char,
    out_text_len: *mut usize,
) -> cs_status {
    guard(|| {
        // SAFETY (both): forwarded caller contract.
        let engine = unsafe { engine_ref(engine)? };
        let tokens = unsafe { slice(tokens, tokens_len, "tokens")? };
        check_out_buffer(out_text, out_text_len, "out_text", "out_text_len")?;
        let text = engine.engine.detokenize(tokens)?;
        // SAFETY: both checked non-NULL above.
        unsafe { write_string(&text, out_text, out_text_len) };
        Ok(())
    })
}

/// Renders `messages_len` chat messages with the model's chat template, followed by the
/// assistant header if `add_generation_prompt`.
///
/// On success `*out_text` receives a library-owned NUL-terminated string of `*out_text_len`
/// bytes; free it with `cs_string_free`. A template that raises gives CS_CHAT_TEMPLATE.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_engine_apply_chat_template(
    engine: *const cs_engine,
    messages: *const cs_chat_message,
    messages_len: usize,
    add_generation_prompt: bool,
    out_text: *mut *mut c_char,
    out_text_len: *mut usize,
) -> cs_status {
    guard(|| {
        // SAFETY (both): forwarded caller contract.
        let engine = unsafe { engine_ref(engine)? };
        let messages = unsafe { chat_messages(messages, messages_len)? };
        check_out_buffer(out_text, out_text_len, "out_text", "out_text_len")?;
        let text = engine.engine.apply_chat_template(&messages, add_generation_prompt)?;
        // SAFETY: both checked non-NULL above.
        unsafe { write_string(&text, out_text, out_text_len) };
        Ok(())
    })
}

/// Embeds `texts_len` NUL-terminated UTF-8 strings with the embedding model.
///
/// Vector i (L2-normalised, `dim` floats) is written to `out_vectors[i * dim ...]`, and `dim`
/// to `*out_dim`. `out_vectors` is the caller's buffer of `out_vectors_len` floats; it must
/// hold `texts_len * dim` (get `dim` from `cs_engine_model_info`), otherwise the call fails
/// with CS_INVALID_ARGUMENT stating the needed size, before any work is done.
/// Errors also: CS_NO_EMBEDDING_MODEL, CS_ENGINE_CLOSED.
/// Thread-safety: any thread; embeddings run outside the generation scheduler.
#[no_mangle]
pub unsafe extern "C" fn cs_engine_embed(
    engine: *const cs_engine,
    texts: *const *const c_char,
    texts_len: usize,
    out_vectors: *mut f32,
    out_vectors_len: usize,
    out_dim: *mut usize,
) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract.
        let engine = unsafe { engine_ref(engine)? };
        let dim = engine.engine.model_info().embedding.as_ref().map(|e| e.dim);
        // SAFETY: forwarded caller contract.
        unsafe {
            embed_into(texts, texts_len, dim, |texts| engine.engine.embed(texts), out_vectors, out_vectors_len, out_dim)
        }
    })
}

/// The body of `cs_engine_embed` and `cs_lease_embed`: reads the texts, checks the caller's
/// buffer holds `texts_len * dim` floats before any work, runs `embed` and copies its vectors
/// out. `dim` is `None` when there is no embedding model.
///
/// # Safety
/// As for `cs_engine_embed`'s `texts`, `out_vectors` and `out_dim`.
pub(crate) unsafe fn embed_into(
    texts: *const *const c_char,
    texts_len: usize,
    dim: Option<usize>,
    embed: impl FnOnce(&[&str]) -> Result<cortexstream::Embeddings, Error>,
    out_vectors: *mut f32,
    out_vectors_len: usize,
    out_dim: *mut usize,
) -> Result<(), Failure> {
    // SAFETY: forwarded caller contract.
    let texts = unsafe { c_str_array(texts, texts_len, "texts")? };
    check_out(out_dim, "out_dim")?;
    let dim = dim.ok_or(Error::NoEmbeddingModel)?;
    let needed = texts.len() * dim;
    if out_vectors_len < needed {
        return Err(Failure::invalid(
            "out_vectors",
            format!("buffer holds {out_vectors_len} floats but {} texts of dimension {dim} need {needed}", texts.len()),
        ));
    }
    check_out(out_vectors, "out_vectors")?;
    let embeddings = embed(&texts)?;
    // SAFETY: `out_vectors` holds at least `needed` floats (checked above).
    let out = unsafe { std::slice::from_raw_parts_mut(out_vectors, needed) };
    for (chunk, vector) in out.chunks_exact_mut(dim.max(1)).zip(&embeddings.vectors) {
        chunk.copy_from_slice(vector);
    }
    // SAFETY: checked non-NULL above.
    unsafe { out_dim.write(dim) };
    Ok(())
}

/// Chat messages passed by C, as the core's type.
///
/// # Safety
/// As for [`slice`], and every message's strings as for [`c_str`].
pub(crate) unsafe fn chat_messages(messages: *const cs_chat_message, len: usize) -> Result<Vec<ChatMessage>, Failure> {
    // SAFETY: forwarded caller contract.
    let messages = unsafe { slice(messages, len, "messages")? };
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            // SAFETY (both): forwarded caller contract.
            let role = unsafe { c_str_described(m.role, "messages", &format!("`messages[{i}].role`"))? };
            let content = unsafe { c_str_described(m.content, "messages", &format!("`messages[{i}].content`"))? };
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

/// Test-only fault hook (not in the header; tests/c declares it): the engine's next
/// thread-pool job panics in a worker-run task, as a kernel bug would. A step then fails its
/// requests with CS_FINISH_ERROR, an embedding call returns CS_INTERNAL, and the engine
/// keeps serving. See `Engine::inject_pool_panic_for_testing`.
///
/// # Safety
/// As for every engine call: NULL or a live handle from `cs_engine_new`.
#[doc(hidden)]
#[no_mangle]
pub unsafe extern "C" fn cs_testing_inject_pool_panic(engine: *const cs_engine) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract.
        let engine = unsafe { engine_ref(engine)? };
        engine.core().inject_pool_panic_for_testing();
        Ok(())
    })
}
