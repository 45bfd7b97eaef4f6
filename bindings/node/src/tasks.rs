//! Engine calls that may take a while, run on the libuv thread pool so the JavaScript thread
//! never waits on them; each resolves a promise.

use std::sync::Arc;

use cortexstream::{Embeddings, Engine, Error};
use napi::bindgen_prelude::{Env, Task};

use crate::errors::to_js_error;

/// `engine.embed(texts)`.
pub struct EmbedTask {
    pub engine: Arc<Engine>,
    pub texts: Vec<String>,
}

impl Task for EmbedTask {
    type Output = Result<Embeddings, Error>;
    type JsValue = Vec<Vec<f32>>;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let texts: Vec<&str> = self.texts.iter().map(String::as_str).collect();
        Ok(self.engine.embed(&texts))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        // Core errors travel as values so they become JavaScript errors here, on the
        // JavaScript thread, where their `code` can be attached.
        output.map(|embeddings| embeddings.vectors).map_err(|e| to_js_error(&env, e))
    }
}

/// `engine.close()`: joining the engine thread waits for its current step. `None`: a
/// registry's engine, which the registry closes.
pub struct CloseTask {
    pub engine: Option<Arc<Engine>>,
}

impl Task for CloseTask {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<()> {
        if let Some(engine) = &self.engine {
            engine.shutdown();
        }
        Ok(())
    }

    fn resolve(&mut self, _env: Env, _output: ()) -> napi::Result<()> {
        Ok(())
    }
}
