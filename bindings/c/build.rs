//! Gives the shared library the SONAME C users link against (`libcortexstream.so`, see
//! build.sh), so executables record that name whatever the file was called at link time.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcortexstream.so");
    }
}
