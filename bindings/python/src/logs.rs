//! Core log records into Python: `set_log_handler(level, handler)` registers a core sink that
//! only queues records (the engine thread never waits for the GIL); one drain thread takes
//! the GIL per record and calls `handler(level, target, message, fields_json)`. A handler
//! that raises is reported with `sys.unraisablehook` and the next record is delivered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use cortexstream::telemetry::{add_sink, remove_sink, LogLevel, LogRecord, SinkId};
use pyo3::prelude::*;

use crate::errors::to_py_err;

/// Records waiting for the GIL; past this, new records are dropped (and counted), never waited for.
const QUEUE_CAPACITY: usize = 4096;

struct Forwarder {
    sink: SinkId,
    drain: JoinHandle<()>,
}

static FORWARDER: Mutex<Option<Forwarder>> = Mutex::new(None);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Forwards core records at `level` (1 error .. 5 trace) and more severe to `handler`;
/// `None` stops forwarding (and waits until the queued records were delivered).
#[pyfunction]
#[pyo3(signature = (level, handler))]
pub fn set_log_handler(py: Python<'_>, level: i64, handler: Option<Py<PyAny>>) -> PyResult<()> {
    let level = match handler {
        Some(_) => Some(LogLevel::from_number(level).map_err(to_py_err)?),
        None => None,
    };
    let previous = FORWARDER.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(previous) = previous {
        stop(py, previous);
    }
    let (Some(level), Some(handler)) = (level, handler) else { return Ok(()) };
    let (records, queue) = sync_channel::<LogRecord>(QUEUE_CAPACITY);
    let sink = add_sink(
        level,
        Arc::new(move |record: &LogRecord| {
            if let Err(TrySendError::Full(_)) = records.try_send(record.clone()) {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }),
    )
    .map_err(to_py_err)?;
    let drain = std::thread::Builder::new()
        .name("cortexstream-logs".into())
        .spawn(move || drain(queue, handler))
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("cannot start the log thread: {e}")))?;
    *FORWARDER.lock().unwrap_or_else(|e| e.into_inner()) = Some(Forwarder { sink, drain });
    Ok(())
}

/// Records dropped because the handler fell more than the queue behind.
#[pyfunction]
pub fn dropped_log_records() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Unregisters the sink (closing the queue) and lets the drain thread finish, without the GIL
/// (the drain thread needs it to deliver what is left).
fn stop(py: Python<'_>, forwarder: Forwarder) {
    remove_sink(forwarder.sink);
    if forwarder.drain.thread().id() != std::thread::current().id() {
        py.detach(|| {
            let _ = forwarder.drain.join();
        });
    }
}

fn drain(queue: Receiver<LogRecord>, handler: Py<PyAny>) {
    for record in queue {
        Python::attach(|py| {
            let args = (record.level as u8, record.target.as_str(), record.message.as_str(), record.fields_json());
            if let Err(error) = handler.call1(py, args) {
                error.write_unraisable(py, None);
            }
        });
    }
}
