//! `Stream`: one request's events as a Python iterator of `Chunk`s.
//!
//! Waiting happens with the GIL released, in short slices so Ctrl-C is noticed promptly
//! (a `KeyboardInterrupt` also cancels the request). The class is `frozen` with its mutable
//! part behind a mutex, so one thread can `cancel()` while another is blocked in `next()`.

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use cortexstream::tools::{finish_reason, ToolCallSplitter};
use cortexstream::{Canceller, CompletionBuilder, Error, Event, RecvError, RequestHandle, ToolCallFormat, WaitLimit};
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::errors::to_py_err;
use crate::records::{Chunk, Completion, TokenLogprobs};
use crate::tools::ToolCall;

/// How long one GIL-free wait lasts before Python gets a chance to run signal handlers.
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// An iterator over one request's output. Breaking out of the loop, `close()`, garbage
/// collection or Ctrl-C cancels the request in the engine.
#[pyclass(frozen, module = "cortexstream._core")]
pub struct Stream {
    request_id: u64,
    prompt_tokens: usize,
    canceller: Canceller,
    receiver: Mutex<Receiver>,
    completion: OnceLock<Completion>,
}

/// The part of a stream that changes as events arrive.
struct Receiver {
    /// `None` once closed; dropping the handle cancels an unfinished request.
    handle: Option<RequestHandle>,
    /// The output so far, to build the `Completion` when the stream ends.
    collected: CompletionBuilder,
    wants_logprobs: bool,
    /// For a request that offered tools: the parser its text goes through, so chunks carry
    /// content and completed calls instead of call syntax.
    tool_calls: Option<ToolCallParsing>,
}

struct ToolCallParsing {
    format: ToolCallFormat,
    splitter: ToolCallSplitter,
}

impl ToolCallParsing {
    /// Runs a chunk's text through the core's splitter: the chunk keeps the content and gains
    /// the calls; the last one says "tool_calls" if the answer stopped after calling.
    fn apply(&mut self, chunk: &mut Chunk, event: &Event) {
        let split = match event {
            Event::Token { text, .. } => self.splitter.text(text),
            Event::Finished { .. } => self.splitter.finish(),
        };
        chunk.text = split.content;
        chunk.tool_calls = split.tool_calls.into_iter().map(ToolCall::from).collect();
        if let Event::Finished { reason, .. } = event {
            chunk.finish_reason = Some(finish_reason(*reason, self.splitter.made_calls()));
        }
    }
}

/// What one wait produced.
enum Received {
    /// Boxed: a chunk (with its logprobs and their bytes) is far larger than the other variants.
    Chunk(Box<Chunk>),
    Nothing,
    Ended,
}

impl Stream {
    /// Wraps a freshly submitted request.
    /// `tool_format`: the request offered tools, written by the model in this syntax.
    pub fn new(handle: RequestHandle, wants_logprobs: bool, tool_format: Option<ToolCallFormat>) -> Self {
        Self {
            request_id: handle.id(),
            prompt_tokens: handle.prompt_tokens(),
            canceller: handle.canceller(),
            receiver: Mutex::new(Receiver {
                handle: Some(handle),
                collected: CompletionBuilder::default(),
                wants_logprobs,
                tool_calls: tool_format
                    .map(|format| ToolCallParsing { format, splitter: ToolCallSplitter::new(format) }),
            }),
            completion: OnceLock::new(),
        }
    }

    /// Reads every remaining chunk and returns the completion (what `Engine.generate` does).
    /// A stream closed before its last chunk has no completion: `CancelledError`.
    pub fn run_to_end(&self, py: Python<'_>) -> PyResult<Completion> {
        while self.next_chunk(py, None)?.is_some() {}
        self.completion.get().cloned().ok_or_else(|| to_py_err(Error::Cancelled))
    }

    /// Locks the receiver. Call only without the GIL: a thread blocked in a wait holds the
    /// lock and needs the GIL back to finish, so taking the lock with the GIL would deadlock.
    fn lock(&self) -> MutexGuard<'_, Receiver> {
        // A panic while holding the lock can only come from a bug here; the state is still usable.
        self.receiver.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn receive(&self, wait: Duration) -> Received {
        let mut receiver = self.lock();
        let Some(handle) = receiver.handle.as_ref() else { return Received::Ended };
        let event = if wait.is_zero() { handle.try_recv() } else { handle.recv_timeout(wait) };
        match event {
            Ok(event) => {
                let Receiver { collected, wants_logprobs, tool_calls, .. } = &mut *receiver;
                Received::Chunk(Box::new(self.chunk_from(event, collected, *wants_logprobs, tool_calls.as_mut())))
            }
            Err(RecvError::Timeout | RecvError::Empty) => Received::Nothing,
            Err(RecvError::Finished) => Received::Ended,
        }
    }

    fn chunk_from(
        &self,
        event: Event,
        collected: &mut CompletionBuilder,
        wants_logprobs: bool,
        tool_calls: Option<&mut ToolCallParsing>,
    ) -> Chunk {
        let mut chunk = match &event {
            Event::Token { id, text, logprobs } => Chunk {
                text: text.clone(),
                token_id: Some(*id),
                logprobs: logprobs.clone().map(|l| TokenLogprobs::new(*id, l)),
                finish_reason: None,
                stop_reason: None,
                usage: None,
                timings: None,
                error: None,
                tool_calls: Vec::new(),
            },
            Event::Finished { reason, stop_reason, usage, timings, error } => Chunk {
                text: String::new(),
                token_id: None,
                logprobs: None,
                finish_reason: Some(reason.as_str()),
                stop_reason: Some(stop_reason.into()),
                usage: Some((*usage).into()),
                timings: Some((*timings).into()),
                error: error.clone(),
                tool_calls: Vec::new(),
            },
        };
        let format = tool_calls.as_ref().map(|parsing| parsing.format);
        if let Some(parsing) = tool_calls {
            parsing.apply(&mut chunk, &event);
        }
        if let Some(completion) = collected.push(event) {
            let reason = completion.finish_reason;
            let completion = Completion::new(completion, wants_logprobs);
            let completion = match format {
                Some(format) => completion.with_tool_calls(format, reason),
                None => completion,
            };
            // Only the one Finished event of a request gets here, so the cell is empty.
            let _ = self.completion.set(completion);
        }
        chunk
    }
}

#[pymethods]
impl Stream {
    /// The engine's id of this request.
    #[getter]
    fn request_id(&self) -> u64 {
        self.request_id
    }

    /// Number of prompt tokens, known as soon as the request is submitted.
    #[getter]
    fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// The whole result, once the last chunk has been read (else `None`).
    #[getter]
    fn completion(&self) -> Option<Completion> {
        self.completion.get().cloned()
    }

    /// Whether the last chunk has been read or the stream was closed.
    #[getter]
    fn finished(&self, py: Python<'_>) -> bool {
        self.completion.get().is_some() || py.detach(|| self.lock().handle.is_none())
    }

    /// The next chunk, waiting at most `timeout` seconds (`None` or `inf`: until one arrives;
    /// NaN or negative: `InvalidRequestError` naming `timeout`).
    /// Returns `None` when the stream has ended or nothing arrived in time; `finished`
    /// tells which. A `KeyboardInterrupt` while waiting cancels the request.
    #[pyo3(signature = (timeout=None))]
    pub fn next_chunk(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Chunk>> {
        let limit = timeout.map_or(Ok(WaitLimit::Forever), |seconds| WaitLimit::from_secs_f64(seconds, "timeout"));
        let deadline = limit.map_err(to_py_err)?.deadline();
        loop {
            let wait = deadline.map_or(SIGNAL_CHECK_INTERVAL, |d| {
                d.saturating_duration_since(Instant::now()).min(SIGNAL_CHECK_INTERVAL)
            });
            let received = py.detach(|| self.receive(wait));
            // Checked after every wait, not only idle ones: `generate` loops here without
            // returning to Python, so Python would never get to run its handlers.
            if let Err(interrupt) = py.check_signals() {
                self.canceller.cancel();
                return Err(interrupt);
            }
            match received {
                Received::Chunk(chunk) => return Ok(Some(*chunk)),
                Received::Ended => return Ok(None),
                Received::Nothing => {}
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
    }

    /// Reads the remaining chunks and returns the completion (blocks; the GIL is released).
    /// Raises `CancelledError` if the stream was closed before its last chunk.
    fn wait(&self, py: Python<'_>) -> PyResult<Completion> {
        self.run_to_end(py)
    }

    /// Asks the engine to stop this request; the stream then ends with finish_reason
    /// `"cancelled"`. Idempotent and safe from any thread.
    fn cancel(&self) {
        self.canceller.cancel();
    }

    /// Cancels the request (if still running) and ends the stream now.
    fn close(&self, py: Python<'_>) {
        self.canceller.cancel();
        py.detach(|| self.lock().handle = None);
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Chunk>> {
        self.next_chunk(py, None)
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<&Bound<'_, PyType>>,
        _exc_value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) {
        self.close(py);
    }
}
