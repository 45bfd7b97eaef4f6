//! Compiling constraints into llguidance matchers, once per distinct constraint.
//!
//! Compiling a JSON schema costs milliseconds; 32 streams with one schema must not pay it 32
//! times. Compiled matchers are cached by the constraint itself (kind and text) and each
//! request gets a deep clone (its own parser state, the compiled grammar and lexer caches
//! shared). Concurrent submits of one new constraint wait for a single compilation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};

use super::state::ConstraintState;
use super::vocabulary::token_env;
use super::Constraint;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Distinct constraints kept compiled; past this the least recently used one is dropped (a
/// server fed a new schema per request must not grow without bound).
const MAX_CACHED: usize = 256;

/// A compiled matcher in its start state, or why the constraint does not compile.
type Compiled = std::result::Result<Mutex<Matcher>, Error>;

/// Compiles constraints for one engine's vocabulary.
pub(crate) struct ConstraintCompiler {
    /// Built on the first constrained request: engines that never see one never pay for it.
    factory: OnceLock<std::result::Result<ParserFactory, String>>,
    cache: Mutex<Cache>,
    /// How many compilations ran (cache misses), for tests.
    compilations: AtomicUsize,
}

/// Compiled constraints with the tick of their last use, at most `capacity` of them.
struct Cache {
    entries: HashMap<Constraint, CacheEntry>,
    capacity: usize,
    tick: u64,
}

struct CacheEntry {
    compiled: Arc<OnceLock<Compiled>>,
    last_used: u64,
}

impl Default for ConstraintCompiler {
    fn default() -> Self {
        Self::with_capacity(MAX_CACHED)
    }
}

impl ConstraintCompiler {
    /// The per-request state for `constraint`, compiled or taken from the cache. Errors are
    /// [`Error::InvalidRequest`] naming the constraint's field with llguidance's reason.
    pub fn start(&self, constraint: &Constraint, tokenizer: &Tokenizer, vocab_size: usize) -> Result<ConstraintState> {
        constraint.validate()?;
        let slot = self.slot(constraint);
        let compiled = slot.get_or_init(|| self.compile(constraint, tokenizer, vocab_size));
        match compiled {
            Ok(template) => {
                let template =
                    template.lock().map_err(|_| Error::Internal("a constraint cache entry is poisoned".into()))?;
                Ok(ConstraintState::new(template.deep_clone(), constraint.field()))
            }
            Err(e) => Err(clone_error(e)),
        }
    }

    /// A compiler keeping at most `capacity` (at least 1) compiled constraints.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            factory: OnceLock::new(),
            cache: Mutex::new(Cache { entries: HashMap::new(), capacity: capacity.max(1), tick: 0 }),
            compilations: AtomicUsize::new(0),
        }
    }

    pub fn compilations(&self) -> usize {
        self.compilations.load(Ordering::Relaxed)
    }

    /// How many constraints are cached now (at most the capacity).
    pub fn cached(&self) -> usize {
        self.lock_cache().entries.len()
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // The cache holds no invariant a panicking holder could break half-way.
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cache entry of `constraint`, created empty if new.
    fn slot(&self, constraint: &Constraint) -> Arc<OnceLock<Compiled>> {
        self.lock_cache().slot(constraint)
    }

    fn compile(&self, constraint: &Constraint, tokenizer: &Tokenizer, vocab_size: usize) -> Compiled {
        self.compilations.fetch_add(1, Ordering::Relaxed);
        let field = constraint.field();
        let grammar = grammar_of(constraint)?;
        let factory = self
            .factory
            .get_or_init(|| new_factory(tokenizer, vocab_size))
            .as_ref()
            .map_err(|message| Error::Internal(message.clone()))?;
        let parser = factory.create_parser(grammar).map_err(|e| Error::invalid(field, reason(&e)))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(message) = matcher.get_error() {
            return Err(Error::invalid(field, message));
        }
        Ok(Mutex::new(matcher))
    }
}

impl Cache {
    /// The entry of `constraint`, marked as just used; a new one evicts the least recently
    /// used entry when the cache is full (a request holding it keeps its own `Arc`).
    fn slot(&mut self, constraint: &Constraint) -> Arc<OnceLock<Compiled>> {
        self.tick += 1;
        let tick = self.tick;
        if let Some(entry) = self.entries.get_mut(constraint) {
            entry.last_used = tick;
            return Arc::clone(&entry.compiled);
        }
        if self.entries.len() >= self.capacity {
            self.evict_least_recently_used();
        }
        let compiled = Arc::new(OnceLock::new());
        self.entries.insert(constraint.clone(), CacheEntry { compiled: Arc::clone(&compiled), last_used: tick });
        compiled
    }

    fn evict_least_recently_used(&mut self) {
        let oldest = self.entries.iter().min_by_key(|(_, entry)| entry.last_used).map(|(key, _)| key.clone());
        if let Some(key) = oldest {
            self.entries.remove(&key);
        }
    }
}

fn new_factory(tokenizer: &Tokenizer, vocab_size: usize) -> std::result::Result<ParserFactory, String> {
    let env = token_env(tokenizer, vocab_size);
    let mut factory = ParserFactory::new_simple(&env)
        .map_err(|e| format!("cannot prepare constrained decoding for this vocabulary: {e}"))?;
    // Errors reach the caller as values; nothing is printed to stderr.
    factory.quiet();
    Ok(factory)
}

/// The llguidance grammar of a constraint (parsing and rewriting only; compiled later).
fn grammar_of(constraint: &Constraint) -> Result<TopLevelGrammar> {
    let field = constraint.field();
    Ok(match constraint {
        Constraint::JsonSchema(text) => {
            let schema: serde_json::Value =
                serde_json::from_str(text).map_err(|e| Error::invalid(field, format!("is not valid JSON: {e}")))?;
            TopLevelGrammar::from_json_schema(with_compact_whitespace(schema))
        }
        Constraint::Regex(pattern) => {
            // llguidance would compile an invalid pattern lazily; check it now for a clear error.
            regex_syntax::parse(pattern).map_err(|e| Error::invalid(field, format!("does not compile: {e}")))?;
            TopLevelGrammar::from_regex(pattern)
        }
        Constraint::Grammar(lark) => TopLevelGrammar::from_lark(lark.clone()),
        Constraint::Choices(choices) => {
            let alternatives: Vec<String> = choices.iter().map(|c| regex_syntax::escape(c)).collect();
            TopLevelGrammar::from_regex(&format!("(?:{})", alternatives.join("|")))
        }
    })
}

/// JSON without free whitespace between tokens (`{"a":1}`), unless the schema says otherwise
/// through llguidance's `x-guidance` options: with free whitespace a small model can spend
/// its whole budget on newlines and never close the object.
fn with_compact_whitespace(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(object) = schema.as_object_mut() {
        object.entry("x-guidance").or_insert_with(|| serde_json::json!({ "whitespace_flexible": false }));
    }
    schema
}

/// llguidance's error text, first line (the rest is its internal context).
fn reason(error: &anyhow::Error) -> String {
    error.to_string().lines().next().unwrap_or("does not compile").to_string()
}

/// A cached compilation error, handed to every request that asks for the same constraint.
fn clone_error(error: &Error) -> Error {
    match error {
        Error::InvalidRequest { param, message } => Error::InvalidRequest { param, message: message.clone() },
        other => Error::Internal(other.to_string()),
    }
}
