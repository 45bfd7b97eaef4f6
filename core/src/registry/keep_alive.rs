//! How long an idle model stays loaded, with Ollama's semantics: a duration, `0` unloads the
//! model as soon as it is idle, a negative value keeps it loaded forever.

use std::time::{Duration, Instant};

use super::RegistryError;
use crate::options::OptionValue;

/// Default keep-alive: five minutes, as Ollama.
pub const DEFAULT_KEEP_ALIVE: KeepAlive = KeepAlive::For(Duration::from_secs(300));

/// How long a model stays loaded once its last request has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Never unloaded for being idle (Ollama: any negative value).
    Forever,
    /// Unloaded this long after it became idle; zero: as soon as it is idle.
    For(Duration),
}

impl Default for KeepAlive {
    fn default() -> Self {
        DEFAULT_KEEP_ALIVE
    }
}

impl KeepAlive {
    /// From a number of seconds: negative is forever; NaN and infinities are refused.
    pub fn from_secs_f64(seconds: f64) -> Result<Self, RegistryError> {
        if !seconds.is_finite() {
            return Err(invalid(&seconds.to_string(), "must be a finite number of seconds"));
        }
        if seconds < 0.0 {
            return Ok(Self::Forever);
        }
        Duration::try_from_secs_f64(seconds).map(Self::For).map_err(|_| invalid(&seconds.to_string(), "is too large"))
    }

    /// Parses what Ollama clients send: a number of seconds (`300`, `-1`, `0`) or a Go
    /// duration (`5m`, `1h30m`, `500ms`, `-1m`); negative means forever.
    pub fn parse(text: &str) -> Result<Self, RegistryError> {
        let trimmed = text.trim();
        if let Ok(seconds) = trimmed.parse::<f64>() {
            return Self::from_secs_f64(seconds);
        }
        if let Some(rest) = trimmed.strip_prefix('-') {
            parse_go_duration(rest).map_err(|reason| invalid(text, reason))?;
            return Ok(Self::Forever);
        }
        parse_go_duration(trimmed.strip_prefix('+').unwrap_or(trimmed))
            .map(Self::For)
            .map_err(|reason| invalid(text, reason))
    }

    /// From a front door's value: null is none (the default applies), a number is seconds, a
    /// string is parsed as by [`parse`](Self::parse); anything else is refused naming `keep_alive`.
    pub fn from_value(value: &OptionValue) -> Result<Option<Self>, RegistryError> {
        match value {
            OptionValue::Null => Ok(None),
            OptionValue::Int(seconds) => Self::from_secs_f64(*seconds as f64).map(Some),
            OptionValue::Float(seconds) => Self::from_secs_f64(*seconds).map(Some),
            OptionValue::Str(text) => Self::parse(text).map(Some),
            other => Err(RegistryError::InvalidKeepAlive {
                value: other.kind(),
                reason: "must be a number of seconds or a duration such as 5m",
            }),
        }
    }

    /// When a model that became idle at `idle_since` expires; `None`: never.
    pub(crate) fn deadline(self, idle_since: Instant) -> Option<Instant> {
        match self {
            Self::Forever => None,
            // Too far to represent is as good as never.
            Self::For(duration) => idle_since.checked_add(duration),
        }
    }

    pub(crate) fn is_zero(self) -> bool {
        self == Self::For(Duration::ZERO)
    }
}

fn invalid(value: &str, reason: &'static str) -> RegistryError {
    RegistryError::InvalidKeepAlive { value: value.to_string(), reason }
}

/// `1h30m`, `5m`, `2.5s`, `500ms`: numbers each followed by a unit (h, m, s, ms, us, µs, ns).
fn parse_go_duration(text: &str) -> Result<Duration, &'static str> {
    const EXPECTED: &str = "expected seconds or a duration such as 5m, 1h30m, 500ms";
    if text.is_empty() {
        return Err(EXPECTED);
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().map_err(|_| EXPECTED)?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(EXPECTED),
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    Duration::try_from_secs_f64(total).map_err(|_| "is too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ollama_values() {
        let secs = |s| KeepAlive::For(Duration::from_secs(s));
        assert_eq!(KeepAlive::parse("300").unwrap(), secs(300));
        assert_eq!(KeepAlive::parse("0").unwrap(), secs(0));
        assert_eq!(KeepAlive::parse("-1").unwrap(), KeepAlive::Forever);
        assert_eq!(KeepAlive::parse("-1m").unwrap(), KeepAlive::Forever);
        assert_eq!(KeepAlive::parse("5m").unwrap(), secs(300));
        assert_eq!(KeepAlive::parse("1h30m").unwrap(), secs(5400));
        assert_eq!(KeepAlive::parse("500ms").unwrap(), KeepAlive::For(Duration::from_millis(500)));
        assert!(KeepAlive::parse("0").unwrap().is_zero());
    }

    #[test]
    fn refuses_garbage_naming_keep_alive() {
        for bad in ["", "5x", "m", "abc", "NaN", "inf", "1e400"] {
            let error = KeepAlive::parse(bad).unwrap_err();
            assert!(error.to_string().contains("keep_alive"), "{bad}: {error}");
        }
    }
}
