//! Native half of the `cortexstream` Node package.
//!
//! The addon only converts: JavaScript options become core requests, core events become
//! plain JavaScript objects, core errors become JavaScript `Error`s with a `code`. Everything
//! that is a JavaScript idiom rather than a conversion (promises, async iteration,
//! `AbortSignal`, default model paths) lives in `lib/*.js`, on top of the classes exported
//! here; the public API is documented in `index.d.ts`.
//!
//! Nothing here blocks the JavaScript thread on the engine: tokens travel from the engine
//! thread to JavaScript through a thread-safe function, and waits (embedding, shutdown) run
//! on the libuv thread pool.

mod engine;
mod errors;
mod logs;
mod naming;
mod options;
mod records;
mod registry;
mod tasks;
