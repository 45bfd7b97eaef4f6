//! Gives the shared library its SONAME, `libcortexstream.so.<major>`, so executables record the
//! ABI they were linked against whatever the file was called at link time (see build.sh).
//!
//! The major version is the ABI: the header's `CS_VERSION_MAJOR` promises that only a major
//! change breaks it, while minor versions add functions or append struct fields behind
//! `struct_size`. So programs built against 0.1 keep loading 0.2, and 1.0 gets `.so.1`.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        let major = env!("CARGO_PKG_VERSION_MAJOR");
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcortexstream.so.{major}");
    }
}
