//! Structured logs. The core emits `tracing` spans and events (a span per request: queued,
//! prefill start, first token, finish with reason and counts, cancel, error; model load;
//! preemptions and KV pressure). This module is the one subscriber that turns them into flat
//! [`LogRecord`]s and hands them to the sinks the front doors register (Python `logging`, a C
//! callback, a Node listener): the bindings only deliver records, they never format them.
//!
//! Nobody listening costs nothing: until a sink is added no subscriber is installed, and
//! while none is registered the subscriber's level hint is `OFF`, so every `tracing` macro
//! returns at its level check without building a field or allocating.
//!
//! Prompt text is never logged unless [`EngineConfig::log_prompts`](crate::EngineConfig::log_prompts)
//! asks for it.
//!
//! A Rust application that already uses its own `tracing` subscriber simply keeps it: the
//! core's spans and events go there and [`add_sink`] reports that another subscriber is set.

mod subscriber;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use subscriber::CoreSubscriber;

/// How severe a record is; the numbers are those of the C ABI (`cs_log_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum LogLevel {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

impl LogLevel {
    /// The level with this C ABI number, or an error naming `level`.
    pub fn from_number(number: i64) -> Result<Self> {
        match number {
            1 => Ok(Self::Error),
            2 => Ok(Self::Warn),
            3 => Ok(Self::Info),
            4 => Ok(Self::Debug),
            5 => Ok(Self::Trace),
            _ => Err(Error::invalid("level", format!("must be 1 (error) to 5 (trace), got {number}"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }

    fn from_tracing(level: &tracing::Level) -> Self {
        match *level {
            tracing::Level::ERROR => Self::Error,
            tracing::Level::WARN => Self::Warn,
            tracing::Level::INFO => Self::Info,
            tracing::Level::DEBUG => Self::Debug,
            _ => Self::Trace,
        }
    }
}

/// One log event, with the fields of the spans it belongs to (a request's `request_id` and
/// `tag`) merged before its own.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    pub level: LogLevel,
    /// Where it comes from: `cortexstream::request`, `cortexstream::model`, `cortexstream::kv`, ...
    pub target: String,
    pub message: String,
    pub fields: Map<String, Value>,
}

impl LogRecord {
    /// The fields as one JSON object (what the C callback receives).
    pub fn fields_json(&self) -> String {
        Value::Object(self.fields.clone()).to_string()
    }
}

/// Receives records on whichever thread logged them (often the engine thread): keep it short,
/// hand the record to a queue if the consumer is slow. A panic in a sink is caught.
pub type LogSink = Arc<dyn Fn(&LogRecord) + Send + Sync>;

/// Names a registered sink, to remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SinkId(u64);

struct Registered {
    id: SinkId,
    level: LogLevel,
    sink: LogSink,
}

#[derive(Default)]
struct Sinks {
    next_id: u64,
    entries: Vec<Registered>,
}

static SINKS: RwLock<Sinks> = RwLock::new(Sinks { next_id: 0, entries: Vec::new() });
/// The most verbose level any sink wants (`0`: none registered), read by the subscriber.
static MAX_LEVEL: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Registers `sink` for records at `level` and more severe; installs the core's subscriber
/// on first use.
pub fn add_sink(level: LogLevel, sink: LogSink) -> Result<SinkId> {
    install_subscriber()?;
    let id = {
        let mut sinks = SINKS.write().unwrap_or_else(|e| e.into_inner());
        sinks.next_id += 1;
        let id = SinkId(sinks.next_id);
        sinks.entries.push(Registered { id, level, sink });
        id
    };
    refresh_max_level();
    Ok(id)
}

/// Removes a sink; unknown ids are ignored. With no sink left logging costs nothing again.
pub fn remove_sink(id: SinkId) {
    SINKS.write().unwrap_or_else(|e| e.into_inner()).entries.retain(|r| r.id != id);
    refresh_max_level();
}

fn install_subscriber() -> Result<()> {
    INSTALLED
        .get_or_init(|| {
            tracing::subscriber::set_global_default(CoreSubscriber::default()).map_err(|e| {
                format!(
                    "another tracing subscriber is installed in this process, its own sinks receive the records ({e})"
                )
            })
        })
        .clone()
        .map_err(Error::Internal)
}

fn refresh_max_level() {
    let max = {
        let sinks = SINKS.read().unwrap_or_else(|e| e.into_inner());
        sinks.entries.iter().map(|r| r.level as usize).max().unwrap_or(0)
    };
    MAX_LEVEL.store(max, Ordering::Release);
    // The macros cache each call site's interest and the global level hint: recompute them.
    tracing::callsite::rebuild_interest_cache();
}

fn max_level() -> usize {
    MAX_LEVEL.load(Ordering::Acquire)
}

/// Gives `record` to every sink that wants its level, each behind a panic guard.
fn deliver(record: &LogRecord) {
    let wanted: Vec<LogSink> = {
        let sinks = SINKS.read().unwrap_or_else(|e| e.into_inner());
        sinks.entries.iter().filter(|r| record.level <= r.level).map(|r| Arc::clone(&r.sink)).collect()
    };
    for sink in wanted {
        // Called outside the registry lock, so a sink may remove itself.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(record)));
    }
}
