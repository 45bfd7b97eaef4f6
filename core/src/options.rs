//! A request's options as every front door receives them: one loosely typed value (a Python
//! dict, a JavaScript object, a REST body's renamed fields) turned into the core's
//! [`SamplingParams`] and priority by serde, with field-by-field errors worded here once.
//!
//! The field list is [`SamplingParams`] itself (its serde derive) plus [`RequestExtras`] (the
//! scheduling priority and the constraint forms). A new sampling field added to
//! [`SamplingParams`] is accepted by every binding without touching them.
//!
//! Rules shared by every door:
//! * a `null` (Python `None`, JavaScript `null`/`undefined`) keeps the field's default;
//! * an unknown field is an error naming it;
//! * a value of the wrong type is an invalid request naming the field, worded by serde
//!   (`invalid type: string "hot", expected f32`);
//! * ranges are checked at submit by [`SamplingParams::validate`].

use std::fmt;

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, Deserialize, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::forward_to_deserialize_any;

use crate::constraint::Constraint;
use crate::error::{Error, Result};
use crate::request::{Prompt, Request, SamplingParams};
use crate::tools::ToolSpec;

/// The `param` of an error about a field no request has.
pub const UNKNOWN_FIELD_PARAM: &str = "options";

const ONLY_ONE_CONSTRAINT: &str = "only one of json_schema, regex, grammar, choices and response_format may be given";

/// A language-neutral value, as a binding hands it over: JSON's shapes plus what JSON cannot
/// hold but callers send (NaN and infinities, integers past 64 bits, types with no JSON form).
#[derive(Debug, Clone, PartialEq)]
pub enum OptionValue {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    List(Vec<OptionValue>),
    /// Entries in the caller's order (the second of two constraints is the one named).
    Map(Vec<(String, OptionValue)>),
    /// A value of a type no option takes (Python `bytes`, a function, ...), by its type name;
    /// deserializing it fails with `invalid type: <name>`.
    Unsupported(String),
}

/// Everything a request carries besides the prompt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestOptions {
    pub sampling: SamplingParams,
    /// Higher runs first; equal priorities run in arrival order.
    pub priority: i32,
    /// A label carried by the request's log records (see [`crate::telemetry`]).
    pub tag: Option<String>,
    /// The tools a chat request offers (`tools`, `tool_choice`, `parallel_tool_calls`),
    /// checked by [`ToolSpec::from_options`].
    pub tools: Option<ToolSpec>,
}

/// The options that are not [`SamplingParams`] fields: the priority, the five ways of
/// spelling a constraint (at most one per request), and the tools.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RequestExtras {
    priority: i32,
    tag: Option<String>,
    /// A JSON schema, as an object or as JSON text.
    json_schema: Option<serde_json::Value>,
    regex: Option<String>,
    grammar: Option<String>,
    choices: Option<Vec<String>>,
    /// OpenAI's `response_format` object.
    response_format: Option<serde_json::Value>,
    /// OpenAI's list of tools (checked by [`ToolSpec::from_options`], which names the path).
    tools: Option<serde_json::Value>,
    /// `"none"`, `"auto"`, `"required"` or `{"type": "function", "function": {"name"}}`.
    tool_choice: Option<serde_json::Value>,
    parallel_tool_calls: Option<bool>,
}

impl RequestOptions {
    /// The options of `value`, which must be a map (or null for all defaults).
    pub fn from_value(value: OptionValue) -> Result<Self> {
        let entries = match value {
            OptionValue::Null => Vec::new(),
            OptionValue::Map(entries) => entries,
            other => {
                return Err(Error::invalid(
                    UNKNOWN_FIELD_PARAM,
                    format!("expected a map of options, got {}", other.kind()),
                ))
            }
        };
        let known = Self::field_names();
        reject_unknown_fields(&entries, &known, OPTIONS_NOUNS, UNKNOWN_FIELD_PARAM)?;
        let (extras, sampling): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .filter(|(_, value)| *value != OptionValue::Null)
            .partition(|(key, _)| fields_of::<RequestExtras>().contains(&key.as_str()));
        let extras: RequestExtras = deserialize_fields(extras, &known, UNKNOWN_FIELD_PARAM)?;
        let mut sampling: SamplingParams = deserialize_fields(sampling, &known, UNKNOWN_FIELD_PARAM)?;
        let priority = extras.priority;
        let tag = extras.tag.clone();
        let tools = extras.tool_spec()?;
        sampling.constraint = extras.constraint()?;
        Ok(Self { sampling, priority, tag, tools })
    }

    /// The request these options describe, for `prompt`.
    pub fn into_request(self, prompt: Prompt) -> Request {
        let mut request = Request::new(prompt, self.sampling).with_priority(self.priority);
        request.tag = self.tag;
        match self.tools {
            Some(tools) => request.with_tools(tools),
            None => request,
        }
    }

    /// Every field name an options map may hold.
    pub fn field_names() -> Vec<&'static str> {
        fields_of::<SamplingParams>().iter().chain(fields_of::<RequestExtras>()).copied().collect()
    }
}

impl<'de> Deserialize<'de> for RequestOptions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let value = OptionValue::deserialize(deserializer)?;
        RequestOptions::from_value(value).map_err(de::Error::custom)
    }
}

impl RequestExtras {
    /// The tools offered, if any (a `tool_choice` other than "none" needs them).
    fn tool_spec(&self) -> Result<Option<ToolSpec>> {
        ToolSpec::from_options(self.tools.as_ref(), self.tool_choice.as_ref(), self.parallel_tool_calls)
    }

    /// The one constraint given, if any; two are an error naming the later one.
    fn constraint(self) -> Result<Option<Constraint>> {
        let mut given: Vec<(&'static str, Option<Constraint>)> = Vec::new();
        if let Some(schema) = self.json_schema {
            given.push(("json_schema", Some(Constraint::JsonSchema(schema_text(schema)?))));
        }
        if let Some(pattern) = self.regex {
            given.push(("regex", Some(Constraint::Regex(pattern))));
        }
        if let Some(lark) = self.grammar {
            given.push(("grammar", Some(Constraint::Grammar(lark))));
        }
        if let Some(choices) = self.choices {
            given.push(("choices", Some(Constraint::Choices(choices))));
        }
        if let Some(format) = self.response_format {
            given.push(("response_format", Constraint::from_response_format(&format)?));
        }
        if let Some((second, _)) = given.get(1) {
            return Err(Error::invalid(second, ONLY_ONE_CONSTRAINT));
        }
        Ok(given.pop().and_then(|(_, constraint)| constraint))
    }
}

/// How the unknown-name error calls one entry and all of them (`option`/`options`).
pub(crate) type Nouns = (&'static str, &'static str);

const OPTIONS_NOUNS: Nouns = ("option", "options");

/// An unknown field is an error naming it and listing the known ones (a typo must not be
/// silently ignored); `param` is the error's field.
pub(crate) fn reject_unknown_fields(
    entries: &[(String, OptionValue)],
    known: &[&'static str],
    (one, all): Nouns,
    param: &'static str,
) -> Result<()> {
    match entries.iter().find(|(key, _)| !known.contains(&key.as_str())) {
        None => Ok(()),
        Some((key, _)) => {
            let shown: String = key.chars().take(40).collect();
            Err(Error::invalid(param, format!("unknown {one} `{shown}`; the {all} are {}", known.join(", "))))
        }
    }
}

/// A JSON schema given as an object (or `true`/`false`) or as JSON text.
fn schema_text(schema: serde_json::Value) -> Result<String> {
    match schema {
        serde_json::Value::String(text) => Ok(text),
        serde_json::Value::Object(_) | serde_json::Value::Bool(_) => Ok(schema.to_string()),
        other => Err(Error::invalid("json_schema", format!("must be an object or a JSON string, got {other}"))),
    }
}

/// Deserializes `T` from `entries`. Each entry is first tried on its own, so an error names
/// the field it is about (serde's own errors do not say which field a type error is in);
/// `known` are the names errors may carry, `unknown_param` the one they carry otherwise.
pub(crate) fn deserialize_fields<T>(
    entries: Vec<(String, OptionValue)>,
    known: &[&'static str],
    unknown_param: &'static str,
) -> Result<T>
where
    T: for<'de> Deserialize<'de>,
{
    for (key, value) in &entries {
        if let Err(error) = T::deserialize(OptionValue::Map(vec![(key.clone(), value.clone())])) {
            let param = known.iter().copied().find(|name| name == key).unwrap_or(unknown_param);
            return Err(Error::invalid(param, error.to_string()));
        }
    }
    T::deserialize(OptionValue::Map(entries)).map_err(|error| Error::invalid(unknown_param, error.to_string()))
}

/// The field names of a struct's serde derive, read by asking it to deserialize from a
/// deserializer that records what `deserialize_struct` is told and then fails.
pub(crate) fn fields_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    struct FieldNames<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for FieldNames<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> std::result::Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("field names recorded"))
        }

        forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _recorded_then_failed = T::deserialize(FieldNames(&mut fields));
    fields
}

impl OptionValue {
    /// What kind of value this is, for messages.
    pub(crate) fn kind(&self) -> String {
        match self {
            OptionValue::Null => "null".into(),
            OptionValue::Bool(_) => "a boolean".into(),
            OptionValue::Int(_) => "an integer".into(),
            OptionValue::Float(_) => "a number".into(),
            OptionValue::Str(_) => "a string".into(),
            OptionValue::List(_) => "a list".into(),
            OptionValue::Map(_) => "a map".into(),
            OptionValue::Unsupported(name) => name.clone(),
        }
    }
}

impl<'de> Deserializer<'de> for OptionValue {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, Self::Error> {
        match self {
            OptionValue::Null => visitor.visit_unit(),
            OptionValue::Bool(b) => visitor.visit_bool(b),
            OptionValue::Int(n) => visit_int(n, visitor),
            OptionValue::Float(x) => visitor.visit_f64(x),
            OptionValue::Str(s) => visitor.visit_string(s),
            OptionValue::List(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter());
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            OptionValue::Map(entries) => {
                let mut map = MapDeserializer::new(entries.into_iter());
                let value = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(value)
            }
            OptionValue::Unsupported(name) => Err(de::Error::invalid_type(de::Unexpected::Other(&name), &visitor)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, Self::Error> {
        match self {
            OptionValue::Null => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

/// The narrowest visit an integer fits, so that serde's range errors read as usual.
fn visit_int<'de, V: Visitor<'de>>(n: i128, visitor: V) -> std::result::Result<V::Value, de::value::Error> {
    if let Ok(n) = i64::try_from(n) {
        visitor.visit_i64(n)
    } else if let Ok(n) = u64::try_from(n) {
        visitor.visit_u64(n)
    } else {
        visitor.visit_i128(n)
    }
}

impl<'de> IntoDeserializer<'de, de::value::Error> for OptionValue {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

/// Any self-describing format (napi's JavaScript values, JSON) can produce an [`OptionValue`].
/// A whole floating-point number within 2^53 becomes an integer: JavaScript has one number
/// type, and `3.0` is as good a count as `3`.
impl<'de> Deserialize<'de> for OptionValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_any(OptionValueVisitor)
    }
}

struct OptionValueVisitor;

/// Largest integer an `f64` holds exactly (`Number.MAX_SAFE_INTEGER`).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

impl<'de> Visitor<'de> for OptionValueVisitor {
    type Value = OptionValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a null, boolean, number, string, list or map")
    }

    fn visit_unit<E>(self) -> std::result::Result<OptionValue, E> {
        Ok(OptionValue::Null)
    }

    fn visit_none<E>(self) -> std::result::Result<OptionValue, E> {
        Ok(OptionValue::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> std::result::Result<OptionValue, D::Error> {
        OptionValue::deserialize(deserializer)
    }

    fn visit_bool<E>(self, b: bool) -> std::result::Result<OptionValue, E> {
        Ok(OptionValue::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> std::result::Result<OptionValue, E> {
        Ok(OptionValue::Int(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> std::result::Result<OptionValue, E> {
        Ok(OptionValue::Int(n.into()))
    }

    fn visit_i128<E>(self, n: i128) -> std::result::Result<OptionValue, E> {
        Ok(OptionValue::Int(n))
    }

    fn visit_f64<E>(self, x: f64) -> std::result::Result<OptionValue, E> {
        if x.fract() == 0.0 && x.abs() <= MAX_SAFE_INTEGER {
            return Ok(OptionValue::Int(x as i128));
        }
        Ok(OptionValue::Float(x))
    }

    fn visit_str<E>(self, s: &str) -> std::result::Result<OptionValue, E> {
        Ok(OptionValue::Str(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> std::result::Result<OptionValue, E> {
        Ok(OptionValue::Str(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<OptionValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(OptionValue::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<OptionValue, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, OptionValue>()? {
            entries.push((key, value));
        }
        Ok(OptionValue::Map(entries))
    }
}

/// `stop`: one string or a list of strings.
pub(crate) fn one_or_many_strings<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<String>, D::Error> {
    struct OneOrMany;

    impl<'de> Visitor<'de> for OneOrMany {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or a list of strings")
        }

        fn visit_str<E>(self, s: &str) -> std::result::Result<Vec<String>, E> {
            Ok(vec![s.to_owned()])
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Vec<String>, A::Error> {
            let mut strings = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                strings.push(item);
            }
            Ok(strings)
        }
    }

    deserializer.deserialize_any(OneOrMany)
}

/// OpenAI's `logit_bias`, `{"token id": bias}`, as (id, bias) pairs. The keys are strings (JSON
/// object keys); a key that is no token id is an error naming the field. The core checks ids
/// against the vocabulary and biases against [-100, 100] at submit.
pub(crate) mod logit_bias_map {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::de::{self, MapAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bias: &[(u32, f32)], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(bias.iter().map(|(id, bias)| (id.to_string(), bias)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<(u32, f32)>, D::Error> {
        struct TokenBiases;

        impl<'de> Visitor<'de> for TokenBiases {
            type Value = Vec<(u32, f32)>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of token id to bias")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // Sorted by id, so that a request's biases apply in one order whatever the map's.
                let mut biases = BTreeMap::new();
                while let Some((key, bias)) = map.next_entry::<String, f32>()? {
                    biases.insert(token_id(&key).map_err(de::Error::custom)?, bias);
                }
                Ok(biases.into_iter().collect())
            }
        }

        deserializer.deserialize_map(TokenBiases)
    }

    fn token_id(key: &str) -> Result<u32, String> {
        let shown: String = key.chars().take(40).collect();
        key.trim().parse::<u32>().map_err(|_| format!("keys must be token ids (non-negative integers), got {shown:?}"))
    }
}

#[cfg(test)]
mod tests;
