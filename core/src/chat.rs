//! Chat templates: turning a list of messages into the prompt text a model was trained on.
//!
//! Templates are the Jinja sources HuggingFace ships (GGUF `tokenizer.chat_template`),
//! compiled once with minijinja in the same dialect `transformers` uses (`trim_blocks`,
//! `lstrip_blocks`, loop controls, Python string methods) and the globals those templates expect.

use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::{context, Environment, ErrorKind};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::request::ChatMessage;
use crate::tokenizer::Tokenizer;
use crate::tools::ToolCallFormat;

/// The name the template is registered under; it shows up in error locations.
const TEMPLATE_NAME: &str = "chat_template";

/// Roles a request may use; anything else is rejected before rendering.
const ROLES: &[&str] = &["system", "user", "assistant", "tool"];

/// A compiled chat template, ready to render messages. Shareable across threads.
#[derive(Debug)]
pub struct ChatTemplate {
    compiled: Compiled,
    /// How this template writes tool calls, read from its source (see [`ToolCallFormat`]).
    tool_format: ToolCallFormat,
}

#[derive(Debug)]
enum Compiled {
    Ready(Environment<'static>),
    /// The model's own template did not compile. Kept instead of failing the load so that
    /// text and token prompts still work; chat requests get this reason as their error.
    Failed(String),
    /// The model ships no template and none was configured: chat requests fail with
    /// [`Error::ChatTemplateMissing`] rather than guess a format.
    Missing,
}

/// The error `raise_exception(...)` raises, recognised on the way out so that the template
/// author's message reaches the caller verbatim.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

impl ChatTemplate {
    /// Compiles `source` with `bos_token`/`eos_token` as the globals of those names.
    /// A template that does not compile is an [`Error::ChatTemplate`].
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let env = compile(source, bos_token, eos_token).map_err(|e| Error::ChatTemplate(compile_failure(&e)))?;
        Ok(Self { compiled: Compiled::Ready(env), tool_format: ToolCallFormat::detect(source) })
    }

    /// The model's template from GGUF `tokenizer.chat_template`; `Ok(None)` when it has none.
    ///
    /// A template that does not compile does *not* fail the load: it returns `Ok(Some(_))`
    /// whose [`render`](Self::render) fails with an [`Error::ChatTemplate`] explaining why, so
    /// the model still serves text and token prompts. Only a non-string value is a load error.
    pub fn from_gguf(gguf: &GgufFile, tokenizer: &Tokenizer) -> Result<Option<Self>> {
        let Some(value) = gguf.get("tokenizer.chat_template") else { return Ok(None) };
        let source = value
            .as_str()
            .ok_or_else(|| Error::model_load(gguf.path(), "metadata `tokenizer.chat_template` must be a string"))?;
        let token_text = |id: Option<u32>| id.and_then(|id| tokenizer.id_to_token(id)).unwrap_or("");
        let compiled = match compile(source, token_text(tokenizer.bos_token_id()), token_text(tokenizer.eos_token_id()))
        {
            Ok(env) => Compiled::Ready(env),
            Err(e) => Compiled::Failed(format!("the model's {}", compile_failure(&e))),
        };
        Ok(Some(Self { compiled, tool_format: ToolCallFormat::detect(source) }))
    }

    /// The template for a model that ships none: every render fails with
    /// [`Error::ChatTemplateMissing`].
    pub fn missing() -> Self {
        Self { compiled: Compiled::Missing, tool_format: ToolCallFormat::Generic }
    }

    /// A template supplied by the caller (the engine option `chat_template`), with the model's
    /// BOS/EOS token texts as `bos_token`/`eos_token`. Unlike the model's own, a template that
    /// does not compile is an [`Error::InvalidRequest`] on `chat_template` at once: the caller
    /// can fix it.
    pub fn from_option(source: &str, tokenizer: &Tokenizer) -> Result<Self> {
        let token_text = |id: Option<u32>| id.and_then(|id| tokenizer.id_to_token(id)).unwrap_or("");
        compile(source, token_text(tokenizer.bos_token_id()), token_text(tokenizer.eos_token_id()))
            .map(|env| Self { compiled: Compiled::Ready(env), tool_format: ToolCallFormat::detect(source) })
            .map_err(|e| Error::invalid("chat_template", compile_failure(&e)))
    }

    /// The same template with `strftime_now` reading the fixed time `unix_seconds` (UTC)
    /// instead of the system clock, so that a template printing today's date (Llama 3.2's)
    /// renders reproducibly.
    pub fn at_fixed_time(mut self, unix_seconds: u64) -> Self {
        if let Compiled::Ready(env) = &mut self.compiled {
            env.add_function("strftime_now", move |format: String| strftime_utc(&format, unix_seconds));
        }
        self
    }

    /// Renders `messages`, followed by the assistant header when `add_generation_prompt`.
    ///
    /// Errors: an empty list or a role outside system/user/assistant/tool is an
    /// [`Error::InvalidRequest`] on `messages`; `raise_exception(msg)` in the template is an
    /// [`Error::ChatTemplate`] carrying `msg`; any other template failure (undefined values,
    /// unknown filters, a template that did not compile) is an [`Error::ChatTemplate`] too.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// How this template writes tool calls: its native syntax, or the generic JSON form when
    /// its source shows none.
    pub fn tool_format(&self) -> ToolCallFormat {
        self.tool_format
    }

    /// [`render`](Self::render) with `tools` (each as given, OpenAI's `{"type": "function",
    /// "function": {..}}`) as the template's `tools` variable, as `transformers`'
    /// `apply_chat_template(messages, tools=...)` passes it (`none` when absent).
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::invalid("messages", "at least one message is required"));
        }
        if let Some((index, message)) = messages.iter().enumerate().find(|(_, m)| !ROLES.contains(&m.role.as_str())) {
            return Err(Error::invalid(
                "messages",
                format!("message {index} has role `{}`; expected one of {}", message.role, ROLES.join(", ")),
            ));
        }
        let env = match &self.compiled {
            Compiled::Ready(env) => env,
            Compiled::Failed(reason) => return Err(Error::ChatTemplate(reason.clone())),
            Compiled::Missing => return Err(Error::ChatTemplateMissing),
        };
        env.get_template(TEMPLATE_NAME)
            .and_then(|template| template.render(context! { messages, tools, add_generation_prompt }))
            .map_err(render_failure)
    }
}

/// A minijinja environment with `source` compiled under [`TEMPLATE_NAME`] and the globals
/// HuggingFace templates rely on.
fn compile(
    source: &str,
    bos_token: &str,
    eos_token: &str,
) -> std::result::Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    // `transformers` renders with these two on; templates are written for them.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_global("bos_token", bos_token.to_owned());
    env.add_global("eos_token", eos_token.to_owned());
    env.add_function("raise_exception", |message: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(RaisedException(message)))
    });
    env.add_function("strftime_now", |format: String| strftime_utc(&format, seconds_since_epoch()));
    // minijinja's own `tojson` escapes HTML characters and prints compact JSON; templates are
    // written for transformers' (Python's `json.dumps`), which tool and argument blocks print.
    env.add_filter("tojson", python_json::tojson);
    env.add_template_owned(TEMPLATE_NAME, source.to_owned())?;
    Ok(env)
}

fn compile_failure(err: &minijinja::Error) -> String {
    format!("chat template does not compile: {err}")
}

/// Maps a render error: a `raise_exception` message verbatim, anything else with minijinja's
/// description (kind, detail and template line).
fn render_failure(err: minijinja::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&err);
    while let Some(cause) = source {
        if let Some(raised) = cause.downcast_ref::<RaisedException>() {
            return Error::ChatTemplate(raised.0.clone());
        }
        source = cause.source();
    }
    Error::ChatTemplate(err.to_string())
}

fn seconds_since_epoch() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Python's `strftime` for the specifiers chat templates use (dates in system prompts, e.g.
/// Llama 3.1's `strftime_now("%d %b %Y")`), in UTC. Other specifiers are kept as written.
fn strftime_utc(format: &str, seconds: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = seconds / 86_400;
    let (year, month, day) = civil_from_days(days);
    let month_name = MONTHS[month as usize - 1];
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = WEEKDAYS[((days + 3) % 7) as usize];
    let (hour, minute, second) = (seconds % 86_400 / 3600, seconds % 3600 / 60, seconds % 60);

    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year % 100),
            Some('m') => out += &format!("{month:02}"),
            Some('d') => out += &format!("{day:02}"),
            Some('e') => out += &format!("{day:>2}"),
            Some('H') => out += &format!("{hour:02}"),
            Some('M') => out += &format!("{minute:02}"),
            Some('S') => out += &format!("{second:02}"),
            Some('B') => out += month_name,
            Some('b') => out += &month_name[..3],
            Some('A') => out += weekday,
            Some('a') => out += &weekday[..3],
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01, by Howard Hinnant's
/// `civil_from_days` (http://howardhinnant.github.io/date_algorithms.html).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // March = 0
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// `tojson` as transformers defines it: Python's `json.dumps(x, ensure_ascii=False,
/// indent=None, separators=None, sort_keys=False)`, byte for byte.
mod python_json {
    use std::fmt::Write;

    use minijinja::value::{Kwargs, ValueKind};
    use minijinja::{Error, ErrorKind, Value};

    struct Style {
        indent: Option<usize>,
        ensure_ascii: bool,
        sort_keys: bool,
    }

    /// The filter: `value | tojson(indent=None, ensure_ascii=False, sort_keys=False)`.
    /// (`separators` is not supported: no shipped template passes it; it is an error, not
    /// silently ignored.)
    pub fn tojson(value: &Value, kwargs: Kwargs) -> Result<String, Error> {
        let style = Style {
            indent: kwargs.get::<Option<usize>>("indent")?,
            ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
            sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        };
        kwargs.assert_all_used()?;
        let mut out = String::new();
        write_value(&mut out, value, &style, 0)?;
        Ok(out)
    }

    fn write_value(out: &mut String, value: &Value, style: &Style, depth: usize) -> Result<(), Error> {
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => write_number(out, value),
            ValueKind::String => write_string(out, value.as_str().unwrap_or_default(), style.ensure_ascii),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                write_container(out, ('[', ']'), &items, style, depth, |out, item, depth| {
                    write_value(out, item, style, depth)
                })?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = value.try_iter()?.collect();
                if style.sort_keys {
                    keys.sort();
                }
                write_container(out, ('{', '}'), &keys, style, depth, |out, key, depth| {
                    match key.as_str() {
                        Some(text) => write_string(out, text, style.ensure_ascii),
                        // Python writes number and bool keys as strings.
                        None => write_string(out, &key.to_string(), style.ensure_ascii),
                    }
                    out.push_str(": ");
                    write_value(out, &value.get_item(key)?, style, depth)
                })?;
            }
            other => {
                return Err(Error::new(ErrorKind::InvalidOperation, format!("tojson cannot serialize a {other}")));
            }
        }
        Ok(())
    }

    /// `[a, b]` on one line, or with `indent`: one item per line, `,` at line ends.
    fn write_container(
        out: &mut String,
        (open, close): (char, char),
        items: &[Value],
        style: &Style,
        depth: usize,
        mut write_item: impl FnMut(&mut String, &Value, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return Ok(());
        }
        for (i, item) in items.iter().enumerate() {
            match style.indent {
                Some(indent) => {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    out.extend(std::iter::repeat_n(' ', indent * (depth + 1)));
                }
                None if i > 0 => out.push_str(", "),
                None => {}
            }
            write_item(out, item, depth + 1)?;
        }
        if let Some(indent) = style.indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', indent * depth));
        }
        out.push(close);
        Ok(())
    }

    /// Integers as they are; floats as Python's `repr` (shortest round-trip digits, `.0` on
    /// whole numbers, exponent form below 1e-4 and from 1e16), `NaN` and `Infinity` as
    /// `json.dumps` writes them.
    fn write_number(out: &mut String, value: &Value) {
        if value.is_integer() {
            let _ = write!(out, "{value}");
            return;
        }
        let x = f64::try_from(value.clone()).unwrap_or(f64::NAN);
        if x.is_nan() {
            out.push_str("NaN");
        } else if x.is_infinite() {
            out.push_str(if x > 0.0 { "Infinity" } else { "-Infinity" });
        } else if x != 0.0 && (x.abs() < 1e-4 || x.abs() >= 1e16) {
            // Rust's `{:e}` gives `1.5e20` / `1e-5`; Python writes `1.5e+20` / `1e-05`.
            let formatted = format!("{x:e}");
            let (mantissa, exponent) = formatted.split_once('e').unwrap_or((&formatted, "0"));
            let (sign, digits) = exponent.strip_prefix('-').map_or(("+", exponent), |d| ("-", d));
            let _ = write!(out, "{mantissa}e{sign}{digits:0>2}");
        } else if x.fract() == 0.0 {
            let _ = write!(out, "{x:.1}");
        } else {
            let _ = write!(out, "{x}");
        }
    }

    /// A JSON string as Python escapes it: `"` `\\` and control characters, and with
    /// `ensure_ascii` every non-ASCII character as `\\uXXXX` (UTF-16 surrogate pairs above
    /// U+FFFF). HTML characters are left alone.
    fn write_string(out: &mut String, text: &str, ensure_ascii: bool) {
        out.push('"');
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(content: &str) -> ChatMessage {
        ChatMessage::new("user", content)
    }

    /// ChatML, as SmolLM2 and many instruct models spell it.
    fn chatml() -> ChatTemplate {
        let source = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] \
                      + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        ChatTemplate::new(source, "", "").expect("ChatML compiles")
    }

    #[test]
    fn a_missing_template_refuses_chat_with_a_typed_error() {
        let err = ChatTemplate::missing().render(&[user("hi")], true).unwrap_err();
        assert!(matches!(err, Error::ChatTemplateMissing), "{err:?}");
        assert_eq!((err.code(), err.param()), ("chat_template_missing", Some("messages")));
    }

    #[test]
    fn chatml_renders_turns_and_generation_prompt() {
        let messages = [ChatMessage::new("system", "Be brief."), user("Hi")];
        let expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n";
        assert_eq!(chatml().render(&messages, false).unwrap(), expected);
        assert_eq!(chatml().render(&messages, true).unwrap(), format!("{expected}<|im_start|>assistant\n"));
    }

    #[test]
    fn empty_messages_are_rejected() {
        let err = chatml().render(&[], true).unwrap_err();
        assert_eq!(err.param(), Some("messages"), "{err}");
    }

    #[test]
    fn unknown_role_is_rejected_by_name() {
        let err = chatml().render(&[user("hi"), ChatMessage::new("wizard", "x")], true).unwrap_err();
        assert_eq!(err.param(), Some("messages"), "{err}");
        assert!(err.to_string().contains("`wizard`"), "{err}");
    }

    #[test]
    fn raise_exception_message_reaches_the_caller() {
        let source =
            "{% if messages[0]['role'] != 'system' %}{{ raise_exception('System message first!') }}{% endif %}";
        let err = ChatTemplate::new(source, "", "").unwrap().render(&[user("hi")], true).unwrap_err();
        match err {
            Error::ChatTemplate(message) => assert_eq!(message, "System message first!"),
            other => panic!("expected a chat template error, got {other:?}"),
        }
    }

    #[test]
    fn unknown_filter_fails_at_render_time() {
        let template = ChatTemplate::new("{{ messages | no_such_filter }}", "", "").unwrap();
        let err = template.render(&[user("hi")], true).unwrap_err();
        assert!(matches!(&err, Error::ChatTemplate(m) if m.contains("no_such_filter")), "{err}");
    }

    #[test]
    fn unknown_tag_fails_to_compile() {
        let err = ChatTemplate::new("{% generation %}{{ x }}{% endgeneration %}", "", "").unwrap_err();
        assert!(matches!(&err, Error::ChatTemplate(m) if m.contains("does not compile")), "{err}");
    }

    #[test]
    fn huggingface_globals_and_python_methods_work() {
        // bos/eos globals, .strip()/.upper() through pycompat, trim_blocks + lstrip_blocks
        // dropping the block lines' own whitespace. Expected output taken from Python jinja2
        // with trim_blocks=True, lstrip_blocks=True.
        let source = "{{ bos_token }}\n{% for m in messages %}\n    {{ m.content.strip().upper() }}{{ eos_token }}\n{% endfor %}";
        let rendered = ChatTemplate::new(source, "<s>", "</s>").unwrap().render(&[user("  hi  ")], false).unwrap();
        assert_eq!(rendered, "<s>\n    HI</s>\n");
    }

    #[test]
    fn strftime_formats_dates_like_python() {
        // 2024-07-23 14:05:09 UTC, a Tuesday; expected strings from Python's
        // time.strftime(format, time.gmtime(1721743509)).
        let seconds = 1_721_743_509;
        assert_eq!(strftime_utc("%d %b %Y", seconds), "23 Jul 2024");
        assert_eq!(strftime_utc("%A %B %e %y %H:%M:%S %% %Q", seconds), "Tuesday July 23 24 14:05:09 % %Q");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
