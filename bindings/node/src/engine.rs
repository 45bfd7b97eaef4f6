//! `NativeEngine` and `NativeRequest`: the core engine and one request's handle, as
//! JavaScript classes. `lib/engine.js` wraps them in the public, promise-based `Engine`.

use std::sync::Arc;

use cortexstream::tools::{parsed_format, ToolCallSplitter};
use cortexstream::{ChatMessage, CompletionBuilder, Engine, Error, Event, Prompt, Request, RequestHandle};
use napi::bindgen_prelude::{AsyncTask, Either, Env, FnArgs, Unknown};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use napi_derive::napi;

use crate::errors::to_js_error;
use crate::naming::camel_case_keys;
use crate::options::{engine_config, raw_prompt, request, whole, Message};
use crate::records::{Chunk, Completion, ModelInfo};
use crate::tasks::{CloseTask, EmbedTask};

/// A chunk, and with the last chunk the request's whole [`Completion`] (`null` before it).
type ChunkArgs = FnArgs<(Chunk, Option<Completion>)>;

/// Hands a request's chunks from the engine thread to a JavaScript function
/// `(chunk, completion)`. It holds the event loop open until the request ends and the engine
/// drops it. The JavaScript function must not throw (`lib/request.js` catches the user's
/// exceptions itself).
type ChunkSink = ThreadsafeFunction<ChunkArgs, (), ChunkArgs, Status, false>;

/// A loaded model serving requests.
#[napi]
pub struct NativeEngine {
    /// Shared with the thread-pool tasks (`embed`, `close`).
    engine: Arc<Engine>,
    /// Lent by a registry (`NativeLease.engine()`): `close()` leaves it running, the registry
    /// decides when it unloads.
    lent: bool,
}

#[napi]
impl NativeEngine {
    /// Loads the model(s) and starts the engine thread.
    #[napi(constructor)]
    pub fn new(env: Env, options: Unknown<'_>) -> napi::Result<Self> {
        let engine = engine_config(&options)?.and_then(Engine::new).map_err(|e| to_js_error(&env, e))?;
        Ok(Self { engine: Arc::new(engine), lent: false })
    }

    /// An engine a registry lent (see `NativeLease.engine`).
    pub(crate) fn lent(engine: Arc<Engine>) -> Self {
        Self { engine, lent: true }
    }

    /// Queues a text or token-id prompt; every chunk, the last one included, goes to `on_chunk`.
    #[napi]
    pub fn submit(
        &self,
        env: Env,
        prompt: Either<String, Vec<f64>>,
        options: Option<Unknown<'_>>,
        on_chunk: ChunkSink,
    ) -> napi::Result<NativeRequest> {
        let request = match raw_prompt(prompt) {
            Ok(prompt) => request(prompt, options)?,
            Err(error) => Err(error),
        };
        self.start(&env, request, on_chunk)
    }

    /// Queues chat messages (the reply is generated after the model's assistant header).
    #[napi]
    pub fn submit_chat(
        &self,
        env: Env,
        messages: Vec<Message>,
        options: Option<Unknown<'_>>,
        on_chunk: ChunkSink,
    ) -> napi::Result<NativeRequest> {
        self.start(&env, request(Prompt::Chat(chat_messages(messages)), options)?, on_chunk)
    }

    /// Unit-length embedding vectors, one per text (on the thread pool).
    #[napi(ts_return_type = "Promise<number[][]>")]
    pub fn embed(&self, texts: Vec<String>) -> AsyncTask<EmbedTask> {
        AsyncTask::new(EmbedTask { engine: Arc::clone(&self.engine), texts })
    }

    /// Token ids of `text`.
    #[napi]
    pub fn tokenize(&self, env: Env, text: String, add_special_tokens: Option<bool>) -> napi::Result<Vec<u32>> {
        self.engine.tokenize(&text, add_special_tokens.unwrap_or(false)).map_err(|e| to_js_error(&env, e))
    }

    /// Text of token ids.
    #[napi]
    pub fn detokenize(&self, env: Env, ids: Vec<f64>) -> napi::Result<String> {
        ids.into_iter()
            .map(|id| whole(id, "ids"))
            .collect::<Result<Vec<u32>, Error>>()
            .and_then(|ids| self.engine.detokenize(&ids))
            .map_err(|e| to_js_error(&env, e))
    }

    /// Renders chat messages with the model's chat template.
    #[napi]
    pub fn apply_chat_template(
        &self,
        env: Env,
        messages: Vec<Message>,
        add_generation_prompt: Option<bool>,
    ) -> napi::Result<String> {
        self.engine
            .apply_chat_template(&chat_messages(messages), add_generation_prompt.unwrap_or(true))
            .map_err(|e| to_js_error(&env, e))
    }

    /// What the engine has loaded.
    #[napi(getter)]
    pub fn model_info(&self) -> ModelInfo {
        self.engine.model_info().into()
    }

    /// Counters, gauges and histograms, keys in camelCase.
    #[napi]
    pub fn metrics(&self) -> napi::Result<serde_json::Value> {
        // Serialising keeps this in step with the core's fields without listing them here.
        let snapshot = serde_json::to_value(self.engine.metrics())?;
        Ok(camel_case_keys(snapshot))
    }

    /// Whether `close()` has been called.
    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.engine.is_closed()
    }

    /// Cancels everything in flight and stops the engine thread (on the thread pool); an
    /// engine lent by a registry is left running.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close(&self) -> AsyncTask<CloseTask> {
        AsyncTask::new(CloseTask { engine: (!self.lent).then(|| Arc::clone(&self.engine)) })
    }

    fn start(&self, env: &Env, request: Result<Request, Error>, on_chunk: ChunkSink) -> napi::Result<NativeRequest> {
        let submit = |request: Request| {
            let wants_logprobs = request.params.logprobs.is_some();
            let tool_format = parsed_format(&request, self.engine.tool_call_format());
            let mut splitter = tool_format.map(ToolCallSplitter::new);
            let mut completion = CompletionBuilder::default();
            // Runs on the engine thread: gathers the completion as the core defines it and
            // only queues the chunk; if JavaScript is gone (the environment is shutting
            // down) the request is cancelled.
            let forward = move |event: &Event| {
                let mut chunk = Chunk::from(event);
                if let Some(splitter) = splitter.as_mut() {
                    chunk.split_tool_calls(splitter, event);
                }
                let done = completion.push(event.clone()).map(|c| {
                    let reason = c.finish_reason;
                    let mut done = Completion::new(c, wants_logprobs);
                    if let Some(format) = tool_format {
                        done.split_tool_calls(format, reason);
                    }
                    done
                });
                on_chunk.call((chunk, done).into(), ThreadsafeFunctionCallMode::NonBlocking) == Status::Ok
            };
            self.engine.submit_with_callback(request, Box::new(forward))
        };
        let handle = request.and_then(submit).map_err(|e| to_js_error(env, e))?;
        Ok(NativeRequest { handle, _engine: Arc::clone(&self.engine) })
    }
}

/// One submitted request. Its chunks go to the function given at submit; this object can
/// only cancel it. Being garbage-collected before the request ends also cancels it.
#[napi]
pub struct NativeRequest {
    handle: RequestHandle,
    /// Keeps the engine alive while the request runs even if JavaScript drops the `Engine`:
    /// the chunk function (which references this object) is rooted until the request ends.
    _engine: Arc<Engine>,
}

#[napi]
impl NativeRequest {
    /// The engine's id of this request.
    #[napi(getter)]
    pub fn id(&self) -> f64 {
        self.handle.id() as f64
    }

    /// Number of prompt tokens, known at submit.
    #[napi(getter)]
    pub fn prompt_tokens(&self) -> u32 {
        self.handle.prompt_tokens() as u32
    }

    /// Asks the engine to stop; the last chunk then has `finishReason: "cancelled"`.
    #[napi]
    pub fn cancel(&self) {
        self.handle.cancel();
    }
}

fn chat_messages(messages: Vec<Message>) -> Vec<ChatMessage> {
    messages.into_iter().map(ChatMessage::from).collect()
}
