//! The `tracing` subscriber behind [`super::add_sink`]: keeps each live span's fields and
//! flattens every event, with the fields of its span, into a [`LogRecord`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

use super::{deliver, max_level, LogLevel, LogRecord};

struct SpanData {
    references: usize,
    fields: Map<String, Value>,
}

#[derive(Default)]
pub(super) struct CoreSubscriber {
    spans: Mutex<HashMap<u64, SpanData>>,
    next_id: AtomicU64,
}

thread_local! {
    /// The spans entered on this thread, innermost last (for events without an explicit parent).
    static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

impl CoreSubscriber {
    fn span_fields(&self, id: u64) -> Map<String, Value> {
        let spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        spans.get(&id).map(|span| span.fields.clone()).unwrap_or_default()
    }
}

fn level_filter(max: usize) -> LevelFilter {
    match max {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

impl Subscriber for CoreSubscriber {
    fn register_callsite(&self, _metadata: &'static Metadata<'static>) -> Interest {
        // Sinks come and go: ask `enabled` each time (the level hint still gates cheaply).
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        LogLevel::from_tracing(metadata.level()) as usize <= max_level()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(level_filter(max_level()))
    }

    fn new_span(&self, attributes: &Attributes<'_>) -> Id {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = Map::new();
        attributes.record(&mut FieldVisitor(&mut fields));
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).insert(id, SpanData { references: 1, fields });
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(data) = spans.get_mut(&span.into_u64()) {
            values.record(&mut FieldVisitor(&mut data.fields));
        }
    }

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let parent = match event.parent() {
            Some(id) => Some(id.into_u64()),
            None if event.is_contextual() => ENTERED.with(|stack| stack.borrow().last().copied()),
            None => None,
        };
        let mut fields = parent.map(|id| self.span_fields(id)).unwrap_or_default();
        event.record(&mut FieldVisitor(&mut fields));
        let message = match fields.remove("message") {
            Some(Value::String(text)) => text,
            Some(other) => other.to_string(),
            None => String::new(),
        };
        let metadata = event.metadata();
        deliver(&LogRecord {
            level: LogLevel::from_tracing(metadata.level()),
            target: metadata.target().to_string(),
            message,
            fields,
        });
    }

    fn enter(&self, span: &Id) {
        ENTERED.with(|stack| stack.borrow_mut().push(span.into_u64()));
    }

    fn exit(&self, span: &Id) {
        let id = span.into_u64();
        ENTERED.with(|stack| {
            let mut stack = stack.borrow_mut();
            if let Some(at) = stack.iter().rposition(|&entered| entered == id) {
                stack.remove(at);
            }
        });
    }

    fn clone_span(&self, span: &Id) -> Id {
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(data) = spans.get_mut(&span.into_u64()) {
            data.references += 1;
        }
        span.clone()
    }

    fn try_close(&self, span: Id) -> bool {
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        let id = span.into_u64();
        let Some(data) = spans.get_mut(&id) else { return false };
        data.references -= 1;
        if data.references == 0 {
            spans.remove(&id);
            return true;
        }
        false
    }
}

/// Writes visited fields into a JSON map: numbers and booleans as such, the rest as text.
struct FieldVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for FieldVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_string(), Value::from(format!("{value:?}")));
    }
}
