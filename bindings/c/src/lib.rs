//! The stable C ABI of cortexstream: `include/cortexstream.h` is generated from this crate by
//! `bindings/c/generate-header.sh` (pinned cbindgen), so the doc comments here are the
//! header's documentation.
//!
//! Conventions (from rustls-ffi and llama.h): opaque handles; every fallible call returns a
//! `cs_status` and explains failures through the thread-local `cs_last_error_message()`;
//! the object comes first, then inputs, then out-params, which are written only on success;
//! every array is followed by its `size_t` length; params structs start with `struct_size`;
//! no panic crosses the boundary.

mod args;
mod engine;
mod event;
mod metrics;
mod owned;
mod params;
mod registry;
mod request;
mod status;
mod text;
// Last: its items close the header.
pub mod log;

use std::ffi::c_char;

/// Major version of the header; a change means an incompatible ABI.
pub const CS_VERSION_MAJOR: u32 = 0;
/// Minor version of the header; new functions or appended struct fields.
pub const CS_VERSION_MINOR: u32 = 3;
/// Patch version of the header.
pub const CS_VERSION_PATCH: u32 = 0;

/// The library's version, "MAJOR.MINOR.PATCH". Compare it with the CS_VERSION_* macros
/// to detect a header/library mismatch at run time.
///
/// Ownership: a static string; never free it. Thread-safety: any thread.
#[no_mangle]
pub extern "C" fn cs_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    /// The header's version macros are literals (cbindgen cannot evaluate `env!`), so they
    /// must be bumped together with the crate version.
    #[test]
    fn version_constants_match_the_crate_version() {
        let expected = format!("{}.{}.{}", super::CS_VERSION_MAJOR, super::CS_VERSION_MINOR, super::CS_VERSION_PATCH);
        assert_eq!(expected, env!("CARGO_PKG_VERSION"));
    }
}
