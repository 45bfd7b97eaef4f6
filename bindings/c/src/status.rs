//! Status codes, the thread-local last error, and [`guard`], which every entry point runs
//! its body in so that no panic crosses the C boundary.

use std::any::Any;
use std::borrow::Cow;
use std::cell::RefCell;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use cortexstream::Error;

use crate::text::to_c_string;

/// The result of every `cs_*` call that can fail. `CS_OK` is zero; for any other value,
/// `cs_last_error_message()` on the same thread explains what went wrong.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum cs_status {
    /// Success.
    CS_OK = 0,
    /// An argument was NULL, not valid UTF-8, out of range or too small; the message names it.
    CS_INVALID_ARGUMENT = 1,
    /// The prompt (plus `max_tokens`) does not fit in the context window; the message gives both sizes.
    CS_CONTEXT_LENGTH_EXCEEDED = 2,
    /// A model file is missing, unreadable, not the expected format or unsupported.
    CS_MODEL_LOAD = 3,
    /// The named model is not known.
    CS_MODEL_NOT_FOUND = 4,
    /// The tokenizer failed to build, encode or decode.
    CS_TOKENIZER = 5,
    /// The chat template failed to render (for example it raised an exception), or the model
    /// has none and the engine param `chat_template` gave none.
    CS_CHAT_TEMPLATE = 6,
    /// The engine has been shut down; no new work is accepted.
    CS_ENGINE_CLOSED = 7,
    /// The request queue is full; retry later.
    CS_OVERLOADED = 8,
    /// The request was cancelled before it produced a result.
    CS_CANCELLED = 9,
    /// Embeddings were asked for but the engine has no embedding model.
    CS_NO_EMBEDDING_MODEL = 10,
    /// Reading a file failed.
    CS_IO = 11,
    /// A bug inside the library (for example a caught panic). The engine keeps serving.
    CS_INTERNAL = 12,
    /// `cs_request_next_event` found no event within the timeout.
    CS_TIMEOUT = 13,
    /// `cs_request_next_event` was called after the request's FINISHED event was delivered.
    CS_END_OF_STREAM = 14,
}

/// Why a call failed: the status it returns and what `cs_last_error_*` will report.
#[derive(Debug)]
pub(crate) struct Failure {
    status: cs_status,
    message: String,
    param: Option<&'static str>,
}

impl Failure {
    /// A failure without a core error behind it (timeouts, end of stream, caught panics).
    pub(crate) fn new(status: cs_status, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), param: None }
    }

    /// A bad argument; `param` names it as the header spells it.
    pub(crate) fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Error::invalid(param, message).into()
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self { status: status_of(&error), message: error.to_string(), param: error.param() }
    }
}

/// The one place a core error becomes a C status.
fn status_of(error: &Error) -> cs_status {
    match error {
        Error::InvalidRequest { .. } => cs_status::CS_INVALID_ARGUMENT,
        Error::ContextLengthExceeded { .. } => cs_status::CS_CONTEXT_LENGTH_EXCEEDED,
        Error::ModelLoad { .. } => cs_status::CS_MODEL_LOAD,
        Error::ModelNotFound(_) => cs_status::CS_MODEL_NOT_FOUND,
        Error::Tokenizer(_) => cs_status::CS_TOKENIZER,
        Error::ChatTemplate(_) | Error::ChatTemplateMissing => cs_status::CS_CHAT_TEMPLATE,
        Error::EngineClosed => cs_status::CS_ENGINE_CLOSED,
        Error::Overloaded(_) => cs_status::CS_OVERLOADED,
        Error::Cancelled => cs_status::CS_CANCELLED,
        Error::NoEmbeddingModel => cs_status::CS_NO_EMBEDDING_MODEL,
        Error::Internal(_) => cs_status::CS_INTERNAL,
        Error::Io { .. } => cs_status::CS_IO,
    }
}

/// The last failure on this thread, kept as C strings so the getters can hand out pointers.
struct LastError {
    message: Cow<'static, CStr>,
    param: Option<Cow<'static, CStr>>,
}

/// What the last error says when recording the real one panicked (it needs no allocation).
const PANIC_WHILE_RECORDING: &CStr = c"internal error: a panic occurred while reporting a failure";

thread_local! {
    static LAST_ERROR: RefCell<Option<LastError>> = const { RefCell::new(None) };
}

/// Runs the body of an entry point: a panic becomes `CS_INTERNAL`, a failure is recorded
/// for `cs_last_error_message()` and turned into its status.
///
/// Everything after the body can panic too (a panic payload's destructor, formatting and
/// allocating the message, the thread-local slot), so it runs under a second
/// `catch_unwind`: whatever happens, the caller gets a status, never an unwinding panic.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> cs_status {
    // Unwind safety: after a panic the only shared state touched again is behind mutexes,
    // whose poisoning is reported as CS_INTERNAL by the callers that lock them.
    catch_unwind(AssertUnwindSafe(|| settle(catch_unwind(AssertUnwindSafe(body))))).unwrap_or_else(|payload| {
        drop_panic_payload(payload);
        record_without_allocating(PANIC_WHILE_RECORDING);
        cs_status::CS_INTERNAL
    })
}

/// Drops a caught panic's payload; if its destructor panics, drops that payload in turn.
fn drop_panic_payload(mut payload: Box<dyn Any + Send>) {
    while let Err(next) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        payload = next;
    }
}

/// The status of a finished body, recording its failure (or its panic) as the last error.
fn settle(outcome: std::thread::Result<Result<(), Failure>>) -> cs_status {
    let failure = match outcome {
        Ok(Ok(())) => return cs_status::CS_OK,
        Ok(Err(failure)) => failure,
        Err(payload) => {
            let message = format!("internal error: panic: {}", panic_message(&*payload));
            // Dropped before the failure is built: a payload whose destructor panics would
            // otherwise leak the value under construction (rust-lang/rust#47949). If it does
            // panic, the outer catch_unwind in `guard` handles it.
            drop(payload);
            Failure::new(cs_status::CS_INTERNAL, message)
        }
    };
    let status = failure.status;
    let last = LastError {
        message: Cow::Owned(to_c_string(&failure.message)),
        param: failure.param.map(|p| Cow::Owned(to_c_string(p))),
    };
    LAST_ERROR.with(|slot| *slot.borrow_mut() = Some(last));
    status
}

/// Sets the last error to a static message, skipping it if the slot is unavailable (being
/// destroyed at thread exit, or borrowed by the panic being handled).
fn record_without_allocating(message: &'static CStr) {
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            *slot = Some(LastError { message: Cow::Borrowed(message), param: None });
        }
    });
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

/// A description of the last failed call on the calling thread, or "" if none failed yet.
///
/// Ownership: the string belongs to the library and stays valid until the next failing
/// `cs_*` call on the same thread. Successful calls leave it unchanged.
/// Thread-safety: each thread has its own last error.
#[no_mangle]
pub extern "C" fn cs_last_error_message() -> *const c_char {
    LAST_ERROR.with(|slot| slot.borrow().as_ref().map_or(c"".as_ptr(), |last| last.message.as_ptr()))
}

/// The argument or request field at fault in the last failed call on the calling thread
/// (for example "temperature" or "messages"), or NULL when the failure names none.
///
/// Ownership and lifetime as for `cs_last_error_message()`.
#[no_mangle]
pub extern "C" fn cs_last_error_param() -> *const c_char {
    LAST_ERROR.with(|slot| {
        slot.borrow().as_ref().and_then(|last| last.param.as_ref()).map_or(std::ptr::null(), |p| p.as_ptr())
    })
}

/// Test-only entry point (not in the header; tests/c declares it): runs a body that panics
/// through [`guard`], with a payload whose destructor panics too when
/// `payload_panics_on_drop` is non-zero. Returns what `guard` returns, CS_INTERNAL.
#[doc(hidden)]
#[no_mangle]
pub extern "C" fn cs_testing_guard_panic(payload_panics_on_drop: i32) -> cs_status {
    guard(|| {
        if payload_panics_on_drop != 0 {
            std::panic::panic_any(PanicsOnDrop);
        }
        panic!("test-only panic through guard");
    })
}

/// A panic payload whose destructor panics.
struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("test-only panic while dropping a panic payload");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_message() -> String {
        // SAFETY: the getter returns a NUL-terminated string valid until the next failure.
        unsafe { CStr::from_ptr(cs_last_error_message()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_becomes_cs_internal_with_its_message() {
        assert_eq!(cs_testing_guard_panic(0), cs_status::CS_INTERNAL);
        assert_eq!(last_message(), "internal error: panic: test-only panic through guard");
    }

    #[test]
    fn a_panic_while_handling_a_panic_still_returns_cs_internal() {
        // Before: the payload was dropped outside catch_unwind, so its panic escaped guard
        // (and, through an extern "C" function, aborted the process).
        assert_eq!(cs_testing_guard_panic(1), cs_status::CS_INTERNAL);
        assert_eq!(last_message(), PANIC_WHILE_RECORDING.to_str().expect("UTF-8"));
        assert_eq!(guard(|| Err(Failure::invalid("x", "bad x"))), cs_status::CS_INVALID_ARGUMENT);
        assert_eq!(last_message(), "invalid value for `x`: bad x");
    }
}
