//! Rust strings handed to C as NUL-terminated copies (a leaf: status messages, model info).

use std::ffi::CString;

/// A C copy of a Rust string. Interior NULs (possible in model output and error messages
/// that quote it) are escaped rather than failing, because these strings are for reading.
pub(crate) fn to_c_string(text: &str) -> CString {
    CString::new(text.replace('\0', "\\0")).expect("interior NULs were escaped")
}
