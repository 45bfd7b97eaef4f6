//! `cs_set_log_callback`: the core's structured log records delivered to one C callback.

use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex, RwLock};

use cortexstream::telemetry::{add_sink, remove_sink, LogLevel, LogRecord, SinkId};

use crate::status::{cs_status, guard, Failure};
use crate::text::to_c_string;

/// `cs_set_log_callback` level: no records (removes the callback).
pub const CS_LOG_OFF: i32 = 0;
/// Errors only (a failed engine step).
pub const CS_LOG_ERROR: i32 = 1;
/// And warnings (KV cache pressure, a request that failed).
pub const CS_LOG_WARN: i32 = 2;
/// And information: model load, a request queued / finished / cancelled / rejected, preemptions.
pub const CS_LOG_INFO: i32 = 3;
/// And debugging detail: a request's prefill start and first token.
pub const CS_LOG_DEBUG: i32 = 4;
/// Everything.
pub const CS_LOG_TRACE: i32 = 5;

/// One log record. It and its strings are valid only during the callback call.
#[repr(C)]
pub struct cs_log_record {
    /// `sizeof(cs_log_record)` of the library: later versions only append fields.
    pub struct_size: usize,
    /// One of the `CS_LOG_*` levels, CS_LOG_ERROR to CS_LOG_TRACE.
    pub level: i32,
    /// Where it comes from (UTF-8): `cortexstream::request`, `cortexstream::model`,
    /// `cortexstream::kv`, `cortexstream::engine`.
    pub target: *const c_char,
    /// What happened (UTF-8), e.g. "queued", "finished", "model loaded".
    pub message: *const c_char,
    /// The record's fields as one JSON object (UTF-8): a request's `request_id` and `tag`,
    /// `reason`, `prompt_tokens`, `completion_tokens`, ...; never prompt text unless the engine
    /// was configured to log prompts.
    pub fields_json: *const c_char,
}

/// Receives log records. Called on whichever thread logged (usually an engine thread, often
/// several at once): it must be thread-safe, short (it delays the engine), must not throw or
/// longjmp across the library, and must not call `cs_set_log_callback`.
#[allow(non_camel_case_types)]
pub type cs_log_callback = Option<unsafe extern "C" fn(record: *const cs_log_record, user_data: *mut c_void)>;

/// The installed callback and its user data.
struct Installed {
    callback: unsafe extern "C" fn(*const cs_log_record, *mut c_void),
    user_data: *mut c_void,
}

// SAFETY: the caller promises (documented above) that the callback and its user data may be
// used from any thread.
unsafe impl Send for Installed {}
unsafe impl Sync for Installed {}

/// Read while a record is delivered, written to replace the callback: so once
/// `cs_set_log_callback` returns, the previous callback is never called again.
static CURRENT: RwLock<Option<Installed>> = RwLock::new(None);
static SINK: Mutex<Option<SinkId>> = Mutex::new(None);

/// Sends the library's log records at `level` (CS_LOG_ERROR .. CS_LOG_TRACE) and more severe to
/// `callback(record, user_data)`, replacing any previous callback; CS_LOG_OFF or a NULL callback
/// removes it (then logging costs the engine nothing). Once this returns, the previous callback
/// is not called again, so its `user_data` may be freed.
///
/// Errors: CS_INVALID_ARGUMENT naming `level` for a level outside CS_LOG_OFF..CS_LOG_TRACE;
/// CS_INTERNAL if another `tracing` subscriber owns the process's logs (a Rust host program).
/// Thread-safety: any thread, but not from inside the callback.
#[no_mangle]
pub extern "C" fn cs_set_log_callback(level: i32, callback: cs_log_callback, user_data: *mut c_void) -> cs_status {
    guard(|| {
        let level = match (level, callback) {
            (CS_LOG_OFF, _) | (_, None) if (CS_LOG_OFF..=CS_LOG_TRACE).contains(&level) => None,
            _ => Some(LogLevel::from_number(level.into())?),
        };
        let mut sink = SINK.lock().map_err(|_| Failure::new(cs_status::CS_INTERNAL, "the log state is poisoned"))?;
        if let Some(previous) = sink.take() {
            remove_sink(previous);
        }
        let installed = level.zip(callback).map(|(_, callback)| Installed { callback, user_data });
        *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = installed;
        if let Some(level) = level {
            *sink = Some(add_sink(level, Arc::new(deliver))?);
        }
        Ok(())
    })
}

/// Calls the installed callback with `record` (a panic here is caught by the core).
fn deliver(record: &LogRecord) {
    let current = CURRENT.read().unwrap_or_else(|e| e.into_inner());
    let Some(installed) = current.as_ref() else { return };
    let target = to_c_string(&record.target);
    let message = to_c_string(&record.message);
    let fields = to_c_string(&record.fields_json());
    let c_record = cs_log_record {
        struct_size: std::mem::size_of::<cs_log_record>(),
        level: record.level as i32,
        target: target.as_ptr(),
        message: message.as_ptr(),
        fields_json: fields.as_ptr(),
    };
    // SAFETY: the callback is the caller's, called as documented; the record outlives the call.
    unsafe { (installed.callback)(&c_record, installed.user_data) };
}
