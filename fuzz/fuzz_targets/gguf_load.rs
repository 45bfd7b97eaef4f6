//! Fuzzes the model loading path from bytes: the GGUF reader, then everything that reads its
//! metadata and tensors (llama hyperparameters and weights, the GGUF tokenizer, the chat
//! template), then a round trip through the tokenizer and template when they load.
//! Any panic is a bug: malformed files must give `Error::ModelLoad`. run.sh also caps single
//! allocations (`-malloc_limit_mb`), so "never a huge allocation" is checked too.
#![no_main]

use std::sync::{Arc, OnceLock};

use cortexstream::chat::ChatTemplate;
use cortexstream::gguf::GgufFile;
use cortexstream::models::llama::LlamaModel;
use cortexstream::threadpool::ThreadPool;
use cortexstream::tokenizer::Tokenizer;
use cortexstream::{ChatMessage, Error};
use libfuzzer_sys::fuzz_target;

fn pool() -> Arc<ThreadPool> {
    static POOL: OnceLock<Arc<ThreadPool>> = OnceLock::new();
    Arc::clone(POOL.get_or_init(|| Arc::new(ThreadPool::new(1).expect("start the thread pool"))))
}

fn assert_load_error<T>(result: cortexstream::Result<T>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(Error::ModelLoad { path, message }) => {
            assert_eq!(path.to_str(), Some("fuzz.gguf"), "the error names the file");
            assert!(!message.is_empty());
            None
        }
        Err(other) => panic!("loading gave {} instead of a model load error: {other}", other.code()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(gguf) = assert_load_error(GgufFile::from_bytes("fuzz.gguf", data.to_vec())) else { return };
    for tensor in gguf.tensors() {
        let (info, bytes) = gguf.tensor_bytes(&tensor.name).expect("a listed tensor is readable");
        assert_eq!(bytes.len(), info.size);
    }
    let _ = assert_load_error(LlamaModel::load(&gguf, pool()));
    let Some(tokenizer) = assert_load_error(Tokenizer::from_gguf(&gguf)) else { return };
    if let Ok(ids) = tokenizer.encode("Hello, world! 123 <|im_end|>", true) {
        let _ = tokenizer.decode(&ids, false);
        for id in ids {
            let _ = tokenizer.token_bytes(id);
        }
    }
    if let Some(Some(template)) = assert_load_error(ChatTemplate::from_gguf(&gguf, &tokenizer)) {
        // A template that fails to render is a request error, never a panic.
        let _ = template.render(&[ChatMessage::new("user", "hi")], true);
    }
});
