//! Constrained decoding: a request may carry a [`Constraint`] (a JSON schema, a regular
//! expression, a Lark grammar or a choice among strings) and then every token it samples
//! keeps its output inside the language the constraint describes.
//!
//! The work is done by `llguidance`: at submit the constraint is compiled (once per distinct
//! constraint, see [`compiler`]), each step the sequence's token mask bans every token the
//! grammar does not allow before the sampler runs, and the sampled token advances the
//! grammar. A request whose grammar is complete ends with `stop`; one that runs out of
//! `max_tokens` first ends with `length` (its output is then a prefix of a valid one).

pub(crate) mod compiler;
pub(crate) mod masks;
pub(crate) mod state;
mod vocabulary;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use masks::MaskCounts;

/// What a constrained request's output must match.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Constraint {
    /// A JSON schema (as JSON text); the output is one JSON value that validates against it.
    /// Only local `$ref`s (`#/...`) are followed. Unsupported schema keywords are an error,
    /// never silently ignored.
    JsonSchema(String),
    /// A regular expression the whole output matches.
    Regex(String),
    /// A Lark grammar (llguidance's dialect: `start: ...`, `/regex/` terminals, `%json`).
    Grammar(String),
    /// Exactly one of these strings.
    Choices(Vec<String>),
}

/// The schema of OpenAI's `response_format: {"type": "json_object"}`: any JSON object.
const ANY_JSON_OBJECT: &str = r#"{"type": "object"}"#;

impl Constraint {
    /// OpenAI's JSON mode: the output is a JSON object (any keys).
    pub fn json_object() -> Self {
        Constraint::JsonSchema(ANY_JSON_OBJECT.to_string())
    }

    /// The request field this constraint came from, as users spell it; errors name it.
    pub fn field(&self) -> &'static str {
        match self {
            Constraint::JsonSchema(_) => "json_schema",
            Constraint::Regex(_) => "regex",
            Constraint::Grammar(_) => "grammar",
            Constraint::Choices(_) => "choices",
        }
    }

    /// Builds a constraint from a kind name (`json_schema`, `json_object`, `regex`, `grammar`,
    /// `choices`) and its text, as the C and Node front doors pass them. `choices` is a JSON
    /// array of strings; `json_object` takes no text.
    pub fn from_kind(kind: &str, text: &str) -> Result<Self> {
        match kind {
            "json_schema" => Ok(Constraint::JsonSchema(text.to_string())),
            "json_object" => Ok(Constraint::json_object()),
            "regex" => Ok(Constraint::Regex(text.to_string())),
            "grammar" => Ok(Constraint::Grammar(text.to_string())),
            "choices" => serde_json::from_str::<Vec<String>>(text)
                .map(Constraint::Choices)
                .map_err(|e| Error::invalid("choices", format!("must be a JSON array of strings: {e}"))),
            other => Err(Error::invalid(
                "constraint",
                format!("unknown kind {other:?} (expected json_schema, json_object, regex, grammar or choices)"),
            )),
        }
    }

    /// OpenAI's `response_format`: `{"type": "text"}` (no constraint), `{"type": "json_object"}`
    /// (any object, or the `schema` given beside it as llama.cpp and vLLM accept) and
    /// `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`. Errors name
    /// `response_format`.
    pub fn from_response_format(format: &serde_json::Value) -> Result<Option<Self>> {
        let invalid = |message: String| Error::invalid("response_format", message);
        let kind = format
            .get("type")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| invalid("must be an object with a string `type`".into()))?;
        let schema = match kind {
            "text" => return Ok(None),
            "json_object" => match format.get("schema") {
                None | Some(serde_json::Value::Null) => return Ok(Some(Constraint::json_object())),
                Some(schema) => schema,
            },
            "json_schema" => format
                .get("json_schema")
                .and_then(|spec| spec.get("schema"))
                .ok_or_else(|| invalid("`json_schema.schema` is required when `type` is \"json_schema\"".into()))?,
            other => {
                return Err(invalid(format!("unknown type {other:?} (expected text, json_object or json_schema)")))
            }
        };
        if !schema.is_object() && !schema.is_boolean() {
            return Err(invalid(format!("the schema must be a JSON object, got {schema}")));
        }
        Ok(Some(Constraint::JsonSchema(schema.to_string())))
    }

    /// Checks what can be checked without compiling; the compiler reports the rest.
    pub fn validate(&self) -> Result<()> {
        let field = self.field();
        match self {
            Constraint::JsonSchema(text) | Constraint::Regex(text) | Constraint::Grammar(text) => {
                if text.trim().is_empty() {
                    return Err(Error::invalid(field, "must not be empty"));
                }
            }
            Constraint::Choices(choices) => {
                if choices.is_empty() {
                    return Err(Error::invalid(field, "must list at least one string"));
                }
                if choices.iter().any(String::is_empty) {
                    return Err(Error::invalid(field, "choices must not be empty strings"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
