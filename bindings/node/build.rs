//! Linker settings for a Node addon (undefined N-API symbols resolve when node loads it).
fn main() {
    napi_build::setup();
}
