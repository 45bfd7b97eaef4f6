//! Wait limits that callers pass to a blocking receive (Python's `next_chunk(timeout=)` in
//! seconds, C's `cs_request_next_event(timeout_ms)`), checked here once so every front door
//! treats them the same way:
//!
//! - NaN or a negative value is an [`Error::InvalidRequest`] naming the argument;
//! - `+inf`, or a finite value too large to represent as a deadline, waits forever;
//! - 0 does not wait.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long a receive may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitLimit {
    /// Until an event arrives.
    Forever,
    /// At most this long.
    For(Duration),
}

impl WaitLimit {
    /// A limit in seconds; `param` is the argument's name as the caller spells it.
    pub fn from_secs_f64(seconds: f64, param: &'static str) -> Result<Self> {
        if seconds.is_nan() || seconds < 0.0 {
            return Err(Error::invalid(
                param,
                format!("must be a number of seconds >= 0 (inf waits forever), got {seconds}"),
            ));
        }
        // `try_from_secs_f64` fails only for +inf and values past Duration::MAX here.
        Ok(Duration::try_from_secs_f64(seconds).map_or(WaitLimit::Forever, WaitLimit::For))
    }

    /// A limit in milliseconds; `param` is the argument's name as the caller spells it.
    pub fn from_millis(millis: i64, param: &'static str) -> Result<Self> {
        let millis = u64::try_from(millis)
            .map_err(|_| Error::invalid(param, format!("must be a number of milliseconds >= 0, got {millis}")))?;
        Ok(WaitLimit::For(Duration::from_millis(millis)))
    }

    /// The instant the wait ends, measured from now; `None` when it never does (also when
    /// the deadline would lie past what `Instant` can represent).
    pub fn deadline(self) -> Option<Instant> {
        match self {
            WaitLimit::Forever => None,
            WaitLimit::For(limit) => Instant::now().checked_add(limit),
        }
    }
}
