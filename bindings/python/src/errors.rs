//! The one place a core [`Error`] becomes a Python exception.
//!
//! The exception classes are plain Python (`cortexstream/errors.py`) because
//! `InvalidRequestError` must subclass both `CortexstreamError` and `ValueError`, which a
//! Rust-defined exception type cannot. The class is chosen there from [`Error::code`], the
//! same code every other front door reports.

use cortexstream::Error;
use pyo3::prelude::*;

/// Converts a core error into the matching `cortexstream.errors` exception.
pub fn to_py_err(error: Error) -> PyErr {
    Python::attach(|py| match exception_for(py, &error) {
        Ok(exception) => PyErr::from_value(exception),
        // Only if the package itself is broken (errors.py missing); say so rather than hide it.
        Err(import_failure) => import_failure,
    })
}

fn exception_for<'py>(py: Python<'py>, error: &Error) -> PyResult<Bound<'py, PyAny>> {
    let (prompt_tokens, context_length) = match error {
        Error::ContextLengthExceeded { prompt_tokens, context_length, .. } => {
            (Some(*prompt_tokens), Some(*context_length))
        }
        _ => (None, None),
    };
    py.import("cortexstream.errors")?
        .call_method1("_from_core", (error.code(), error.to_string(), error.param(), prompt_tokens, context_length))
}
