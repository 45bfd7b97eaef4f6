//! `cs_request`: submitting a prompt, receiving its events (callback or pull), cancelling.

use std::ffi::{c_char, c_void};
use std::sync::Mutex;
use std::time::Duration;

use cortexstream::tools::{messages_from_json, parsed_format};
use cortexstream::{Canceller, Event, Prompt, RecvError, RequestHandle, WaitLimit};

use crate::args::{c_str, check_out, read_sized, require, slice};
use crate::engine::{chat_messages, cs_chat_message, cs_engine, engine_ref};
use crate::event::{cs_event, EventBuffer, ToolCallText};
use crate::params::{cs_sampling_default_params, cs_sampling_params};
use crate::status::{cs_status, guard, Failure};

/// Receives a request's events on the engine thread: zero or more TOKEN events, then exactly
/// one FINISHED event, which is always the last call for that request (also after a cancel,
/// `cs_request_free` or `cs_engine_free`). Return true to keep going, false to cancel the
/// request (its FINISHED event still follows).
///
/// `event` and its pointers are valid only until the callback returns. Keep callbacks short:
/// they delay every request in the batch. The callback must not throw or longjmp across the
/// library, nor call `cs_engine_free`. `user_data` must stay valid until the FINISHED call.
#[allow(non_camel_case_types)]
pub type cs_event_callback = Option<unsafe extern "C" fn(event: *const cs_event, user_data: *mut c_void) -> bool>;

/// A submitted request.
///
/// Thread-safety: `cs_request_cancel` and `cs_request_id` may be called from any thread at
/// any time before `cs_request_free`; `cs_request_next_event` calls are serialised by the
/// library. `cs_request_free` must be the last call on it.
#[allow(non_camel_case_types)]
pub struct cs_request {
    id: u64,
    canceller: Canceller,
    stream: Mutex<Stream>,
}

struct Stream {
    /// Held in both modes, because dropping a handle cancels its request.
    handle: RequestHandle,
    /// The event lent to C by `cs_request_next_event`; `None` when events go to a callback.
    pulled: Option<Pulled>,
}

#[derive(Default)]
struct Pulled {
    buffer: EventBuffer,
    current: Option<cs_event>,
    /// For a request with tools: the splitter its text goes through.
    tools: Option<ToolCallText>,
}

/// `user_data` on its way to the engine thread.
struct UserData(*mut c_void);

// SAFETY: the header requires `user_data` to be usable from the engine thread.
unsafe impl Send for UserData {}

impl UserData {
    // A method rather than a field access so closures capture the whole `Send` wrapper.
    fn get(&self) -> *mut c_void {
        self.0
    }
}

/// Submits a NUL-terminated UTF-8 prompt for completion (no chat template is applied).
///
/// With a `callback`, events go to it on the engine thread (see `cs_event_callback`);
/// with NULL, take them with `cs_request_next_event`. `params` (and the strings and arrays it
/// points to) are only read during the call; `user_data` is passed through untouched.
/// On success `*out_request` receives a new request; free it with `cs_request_free` exactly once.
/// Errors: CS_INVALID_ARGUMENT naming the field, CS_CONTEXT_LENGTH_EXCEEDED, CS_OVERLOADED,
/// CS_ENGINE_CLOSED.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_engine_submit_text(
    engine: *const cs_engine,
    prompt: *const c_char,
    params: *const cs_sampling_params,
    callback: cs_event_callback,
    user_data: *mut c_void,
    out_request: *mut *mut cs_request,
) -> cs_status {
    guard(|| {
        // SAFETY (all): forwarded caller contract.
        let prompt = unsafe { c_str(prompt, "prompt")? };
        unsafe { submit(engine, Prompt::Text(prompt.to_owned()), params, callback, user_data, out_request) }
    })
}

/// Submits `tokens_len` prompt token ids, used as they are. Otherwise as `cs_engine_submit_text`.
#[no_mangle]
pub unsafe extern "C" fn cs_engine_submit_tokens(
    engine: *const cs_engine,
    tokens: *const u32,
    tokens_len: usize,
    params: *const cs_sampling_params,
    callback: cs_event_callback,
    user_data: *mut c_void,
    out_request: *mut *mut cs_request,
) -> cs_status {
    guard(|| {
        // SAFETY (all): forwarded caller contract.
        let tokens = unsafe { slice(tokens, tokens_len, "tokens")? };
        unsafe { submit(engine, Prompt::Tokens(tokens.to_vec()), params, callback, user_data, out_request) }
    })
}

/// Submits `messages_len` chat messages, rendered with the model's chat template plus the
/// assistant header. Otherwise as `cs_engine_submit_text`.
#[no_mangle]
pub unsafe extern "C" fn cs_engine_submit_chat(
    engine: *const cs_engine,
    messages: *const cs_chat_message,
    messages_len: usize,
    params: *const cs_sampling_params,
    callback: cs_event_callback,
    user_data: *mut c_void,
    out_request: *mut *mut cs_request,
) -> cs_status {
    guard(|| {
        // SAFETY (all): forwarded caller contract.
        let messages = unsafe { chat_messages(messages, messages_len)? };
        unsafe { submit(engine, Prompt::Chat(messages), params, callback, user_data, out_request) }
    })
}

/// Submits a conversation given as JSON text (UTF-8) in OpenAI's shape:
/// `[{"role", "content", "tool_calls"?, "tool_call_id"?, "name"?}]`, `content` null allowed on
/// an assistant turn with `tool_calls` (arguments as JSON text or an object). This is how a
/// tool-calling history (assistant calls, `tool` results) reaches the chat template; with
/// `params->tools` the model may call tools (see `cs_event.tool_calls`). A malformed
/// conversation is CS_INVALID_ARGUMENT naming `messages` with the message's index.
/// Otherwise as `cs_engine_submit_chat`.
#[no_mangle]
pub unsafe extern "C" fn cs_engine_submit_chat_json(
    engine: *const cs_engine,
    messages_json: *const c_char,
    params: *const cs_sampling_params,
    callback: cs_event_callback,
    user_data: *mut c_void,
    out_request: *mut *mut cs_request,
) -> cs_status {
    guard(|| {
        // SAFETY (all): forwarded caller contract.
        let text = unsafe { c_str(messages_json, "messages_json")? };
        let messages = messages_from_json(text)?;
        unsafe { submit(engine, Prompt::Chat(messages), params, callback, user_data, out_request) }
    })
}

/// The part the submit calls share.
///
/// # Safety
/// As documented on `cs_engine_submit_text`.
unsafe fn submit(
    engine: *const cs_engine,
    prompt: Prompt,
    params: *const cs_sampling_params,
    callback: cs_event_callback,
    user_data: *mut c_void,
    out_request: *mut *mut cs_request,
) -> Result<(), Failure> {
    // SAFETY (all): forwarded caller contract.
    let engine = unsafe { engine_ref(engine)? }.core();
    let params = unsafe { read_sized(params, cs_sampling_default_params(), "params")? };
    let request = unsafe { params.to_options()? }.into_request(prompt);
    check_out(out_request, "out_request")?;
    let tool_format = parsed_format(&request, engine.tool_call_format());
    let stream = match callback {
        None => {
            let pulled = Pulled { tools: tool_format.map(ToolCallText::new), ..Pulled::default() };
            Stream { handle: engine.submit(request)?, pulled: Some(pulled) }
        }
        Some(callback) => {
            let user_data = UserData(user_data);
            let mut buffer = EventBuffer::default();
            let mut tools = tool_format.map(ToolCallText::new);
            let forward = move |event: &Event| {
                let view = buffer.view_split(event, tools.as_mut());
                // SAFETY: the caller supplied a valid callback; `view` outlives the call.
                unsafe { callback(&view, user_data.get()) }
            };
            Stream { handle: engine.submit_with_callback(request, Box::new(forward))?, pulled: None }
        }
    };
    let request =
        cs_request { id: stream.handle.id(), canceller: stream.handle.canceller(), stream: Mutex::new(stream) };
    // SAFETY: checked non-NULL above.
    unsafe { out_request.write(Box::into_raw(Box::new(request))) };
    Ok(())
}

/// The request behind a handle passed in by C.
///
/// # Safety
/// A non-NULL `request` must come from a submit call and not have been freed.
unsafe fn request_ref<'a>(request: *const cs_request) -> Result<&'a cs_request, Failure> {
    // SAFETY: forwarded caller contract.
    unsafe { require(request, "request") }
}

/// Takes the next event of a request submitted without a callback.
///
/// Waits up to `timeout_ms` milliseconds (0: do not wait; -1: wait as long as it takes; any
/// other negative value is CS_INVALID_ARGUMENT naming `timeout_ms`).
/// On success `*out_event` points to the event, lent until the next call on this request or
/// `cs_request_free`. CS_TIMEOUT if no event came in time (call again); CS_END_OF_STREAM
/// once the FINISHED event has been delivered; CS_INVALID_ARGUMENT for a callback request.
/// Thread-safety: any thread; concurrent calls on one request are serialised.
#[no_mangle]
pub unsafe extern "C" fn cs_request_next_event(
    request: *const cs_request,
    timeout_ms: i64,
    out_event: *mut *const cs_event,
) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract.
        let request = unsafe { request_ref(request)? };
        check_out(out_event, "out_event")?;
        let mut stream = request
            .stream
            .lock()
            .map_err(|_| Failure::new(cs_status::CS_INTERNAL, "request state poisoned by an earlier panic"))?;
        let Stream { handle, pulled } = &mut *stream;
        let Some(Pulled { buffer, current, tools }) = pulled else {
            return Err(Failure::invalid("request", "it was submitted with a callback, which receives its events"));
        };
        let event = receive(handle, timeout_ms)?;
        let event: *const cs_event = current.insert(buffer.view_split(&event, tools.as_mut()));
        // SAFETY: checked non-NULL above.
        unsafe { out_event.write(event) };
        Ok(())
    })
}

/// `cs_request_next_event`'s `timeout_ms` value that waits for as long as it takes (C has no
/// infinity; -1 is the library's "not set", as in `max_tokens`).
const WAIT_FOREVER_MS: i64 = -1;

fn receive(handle: &RequestHandle, timeout_ms: i64) -> Result<Event, Failure> {
    let limit = match timeout_ms {
        WAIT_FOREVER_MS => WaitLimit::Forever,
        ms => WaitLimit::from_millis(ms, "timeout_ms")?,
    };
    let outcome = match limit {
        WaitLimit::Forever => handle.recv().ok_or(RecvError::Finished),
        WaitLimit::For(Duration::ZERO) => handle.try_recv(),
        WaitLimit::For(wait) => handle.recv_timeout(wait),
    };
    outcome.map_err(|e| match e {
        RecvError::Timeout | RecvError::Empty => {
            Failure::new(cs_status::CS_TIMEOUT, format!("no event within {timeout_ms} ms"))
        }
        RecvError::Finished => {
            Failure::new(cs_status::CS_END_OF_STREAM, "the request's FINISHED event was already delivered")
        }
    })
}

/// Asks the engine to stop the request. Idempotent; takes effect within one engine step,
/// after which the FINISHED event (reason CS_FINISH_CANCELLED, with the partial usage) is
/// delivered. Cancelling a finished request does nothing.
/// Thread-safety: any thread, concurrently with every call except `cs_request_free`.
#[no_mangle]
pub unsafe extern "C" fn cs_request_cancel(request: *const cs_request) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract.
        unsafe { request_ref(request)? }.canceller.cancel();
        Ok(())
    })
}

/// Writes the request's id (unique within its engine, as used in logs and metrics) to `*out_id`.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_request_id(request: *const cs_request, out_id: *mut u64) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract.
        let request = unsafe { request_ref(request)? };
        check_out(out_id, "out_id")?;
        // SAFETY: checked non-NULL above.
        unsafe { out_id.write(request.id) };
        Ok(())
    })
}

/// Frees a request, cancelling it first if it is still running. A callback request's
/// callback may still receive its final FINISHED event after this returns, on the engine
/// thread, so keep `user_data` valid until then. May be called before or after
/// `cs_engine_free` of its engine.
///
/// Ownership: free each request exactly once; the handle is invalid afterwards. NULL
/// returns CS_INVALID_ARGUMENT.
/// Thread-safety: no other call on this request may run or start concurrently.
#[no_mangle]
pub unsafe extern "C" fn cs_request_free(request: *mut cs_request) -> cs_status {
    guard(|| {
        // SAFETY: forwarded caller contract.
        unsafe { request_ref(request)? }.canceller.cancel();
        // SAFETY: came from a submit call and is freed once, by the contract.
        drop(unsafe { Box::from_raw(request) });
        Ok(())
    })
}
