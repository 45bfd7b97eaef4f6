//! `setLogCallback`: the core's structured log records, queued from the engine threads to one
//! JavaScript function `(level, target, message, fieldsJson)` through a thread-safe function.
//! `lib/logs.js` wraps it in the public `setLogListener` (which catches a listener's throws).

use std::sync::{Arc, Mutex};

use cortexstream::telemetry::{add_sink, remove_sink, LogLevel, LogRecord, SinkId};
use napi::bindgen_prelude::{Env, FnArgs};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use napi_derive::napi;

use crate::errors::to_js_error;

type LogArgs = FnArgs<(u32, String, String, String)>;
/// Must not throw (`lib/logs.js` catches the listener's exceptions itself).
type LogFunction = ThreadsafeFunction<LogArgs, (), LogArgs, Status, false>;

static SINK: Mutex<Option<SinkId>> = Mutex::new(None);

/// Sends core records at `level` (1 error .. 5 trace) and more severe to `callback`, replacing
/// the previous one; no callback (or level 0) stops. The callback does not keep the process alive.
#[napi]
pub fn set_log_callback(env: Env, level: u32, callback: Option<LogFunction>) -> napi::Result<()> {
    let mut sink = SINK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(previous) = sink.take() {
        remove_sink(previous);
    }
    let Some(mut callback) = callback.filter(|_| level != 0) else { return Ok(()) };
    let level = LogLevel::from_number(level.into()).map_err(|e| to_js_error(&env, e))?;
    // A log listener alone must not keep node running.
    #[allow(deprecated)] // the suggested replacement (`Weak` functions) would change the JS-facing type
    callback.unref(&env)?;
    let callback = Arc::new(callback);
    let deliver = move |record: &LogRecord| {
        let args = (record.level as u32, record.target.clone(), record.message.clone(), record.fields_json());
        // Queued, never waited for: a full or closing queue drops the record.
        let _ = callback.call(args.into(), ThreadsafeFunctionCallMode::NonBlocking);
    };
    *sink = Some(add_sink(level, Arc::new(deliver)).map_err(|e| to_js_error(&env, e))?);
    Ok(())
}
