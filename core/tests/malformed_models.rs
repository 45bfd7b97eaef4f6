//! Malformed model files through the real load path (issue 9, `../shared/RELIABILITY.md`:
//! "corrupt, truncated or non-GGUF file -> load error naming the file and the problem; no
//! panic, no huge allocation").
//!
//! Every case writes a broken file into a temp folder and calls `Engine::new` (or
//! `BertEmbedder::load` for the embedder folder). It must return `ModelLoad` (or `Io`) whose
//! message names the file and the problem; a panic fails the case, and a counting global
//! allocator fails it when any single allocation during the load asks for more than
//! [`ALLOCATION_LIMIT`]. Broken GGUFs come from two sources: the real SmolLM2 file cut at
//! many points, and a tiny but complete synthetic llama model (`gguf_writer`) broken one way
//! at a time; the intact synthetic model must load and generate, so each failure is due to
//! its one defect.
//!
//! Run with `--test-threads=1` (the allocation high-water mark is process-wide).

mod common;
mod gguf_writer;

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cortexstream::gguf::{GgufFile, Value, MAX_ARRAY_ITEMS};
use cortexstream::models::bert::BertEmbedder;
use cortexstream::threadpool::ThreadPool;
use cortexstream::{Engine, EngineConfig, Error, FinishReason, Prompt, Request, SamplingParams};
use gguf_writer::{after_key, after_tensor_name, patch_u32, patch_u64, GgufSpec};

// ---------- the counting allocator ----------

/// The largest single allocation a malformed file may cause. Loading the real SmolLM2 needs
/// at most ~18 MB at once; the BERT loader reads its 87 MiB weights file in one piece, but the
/// broken files here are small.
const ALLOCATION_LIMIT: usize = 256 << 20;

struct CountingAllocator;

static LARGEST_ALLOCATION: AtomicUsize = AtomicUsize::new(0);

fn record(size: usize) {
    LARGEST_ALLOCATION.fetch_max(size, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; we only record sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `load`, returning its result (or the panic message) and the largest allocation it made.
fn measured<T>(load: impl FnOnce() -> cortexstream::Result<T>) -> (Result<cortexstream::Result<T>, String>, usize) {
    LARGEST_ALLOCATION.store(0, Ordering::Relaxed);
    let result = catch_unwind(AssertUnwindSafe(load)).map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into())
    });
    (result, LARGEST_ALLOCATION.load(Ordering::Relaxed))
}

// ---------- cases ----------

/// A temp folder for this test process, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("cortexstream-malformed-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Collects failures so one run reports every broken case at once.
#[derive(Default)]
struct Report {
    passed: usize,
    failures: Vec<String>,
}

impl Report {
    /// Checks one load: an error (never a panic, never success) of code `model_load_error` or
    /// `io_error`, whose message names `file` and contains every one of `expected`, after no
    /// single allocation above the limit.
    fn check<T>(
        &mut self,
        case: &str,
        file: &Path,
        expected: &[&str],
        (result, largest): (Result<cortexstream::Result<T>, String>, usize),
    ) {
        let failure = match result {
            Err(panic) => Some(format!("panicked: {panic}")),
            Ok(Ok(_)) => Some("loaded without an error".into()),
            Ok(Err(err)) => {
                let message = err.to_string();
                // Shown with --nocapture, to read what users would see.
                eprintln!("{case} [largest allocation {largest} B]: {message}");
                let file_name = file.display().to_string();
                if !matches!(err, Error::ModelLoad { .. } | Error::Io { .. }) {
                    Some(format!("wrong error kind {} ({message})", err.code()))
                } else if !message.contains(&file_name) {
                    Some(format!("message does not name {file_name}: {message}"))
                } else {
                    expected.iter().find(|e| !message.contains(*e)).map(|e| format!("message lacks {e:?}: {message}"))
                }
            }
        };
        let too_big = (largest > ALLOCATION_LIMIT)
            .then(|| format!("allocated {largest} bytes at once (limit {ALLOCATION_LIMIT})"));
        let problems: Vec<String> = failure.into_iter().chain(too_big).collect();
        if problems.is_empty() {
            self.passed += 1;
        } else {
            self.failures.push(format!("{case}: {}", problems.join("; ")));
        }
    }

    fn finish(self, what: &str) {
        assert!(
            self.failures.is_empty(),
            "{} of {} {what} cases failed:\n{}",
            self.failures.len(),
            self.failures.len() + self.passed,
            self.failures.join("\n")
        );
        eprintln!("{what}: {} cases passed", self.passed);
    }
}

/// The engine on one thread with a small KV cache: loading is what is under test.
fn config(path: &Path) -> EngineConfig {
    EngineConfig { threads: Some(1), kv_cache_tokens: 256, ..EngineConfig::new(path) }
}

fn load_engine(path: &Path) -> (Result<cortexstream::Result<Engine>, String>, usize) {
    measured(|| Engine::new(config(path)))
}

// ---------- the synthetic model ----------

#[test]
fn the_intact_synthetic_model_loads_and_generates() {
    let scratch = Scratch::new("intact");
    let path = scratch.write("tiny.gguf", &GgufSpec::tiny_llama().to_bytes());
    if let Some(dir) = std::env::var_os("CORTEXSTREAM_WRITE_FUZZ_SEED") {
        // How fuzz/corpus/gguf_load/tiny_llama*.gguf were made (fuzz/README.md): smaller still
        // (hidden size 8, 13 KB), so the fuzzer runs fast; the second one has a chat template.
        let mut small = GgufSpec::llama(8, 16);
        fs::write(Path::new(&dir).join("tiny_llama.gguf"), small.to_bytes()).unwrap();
        let template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}\
                        {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        small.set("tokenizer.chat_template", Value::String(template.into()));
        small.set("tokenizer.ggml.pre", Value::String("smollm".into()));
        fs::write(Path::new(&dir).join("tiny_llama_chat_template.gguf"), small.to_bytes()).unwrap();
    }
    let smaller = scratch.write("smaller.gguf", &GgufSpec::llama(8, 16).to_bytes());
    Engine::new(config(&smaller))
        .expect("the hidden-size-8 model loads")
        .generate(Request::new("hi", SamplingParams { max_tokens: Some(2), ..SamplingParams::greedy() }))
        .expect("and generates");
    let engine = Engine::new(config(&path)).expect("the intact tiny model loads");
    let params = SamplingParams { max_tokens: Some(4), ..SamplingParams::greedy() };
    let completion = engine.generate(Request::new("hi there", params)).expect("it generates");
    assert!(!completion.token_ids.is_empty());
    assert!(matches!(completion.finish_reason, FinishReason::Length | FinishReason::Stop), "{completion:?}");
    // It has no chat template, so chat requests are refused rather than formatted by a guess
    // (core/tests/model_metadata.rs covers chat templates).
    let chat = Prompt::Chat(vec![cortexstream::ChatMessage::new("user", "to")]);
    let params = SamplingParams { max_tokens: Some(2), ..SamplingParams::greedy() };
    let refused = engine.generate(Request::new(chat, params));
    assert!(matches!(refused, Err(Error::ChatTemplateMissing)), "{refused:?}");
}

/// One defect per case, applied to the intact model's spec.
fn spec_cases() -> Vec<(&'static str, Vec<&'static str>, GgufSpec)> {
    let base = GgufSpec::tiny_llama;
    let with = |edit: &dyn Fn(&mut GgufSpec)| {
        let mut spec = base();
        edit(&mut spec);
        spec
    };
    let s = |v: &str| Value::String(v.into());
    vec![
        ("version 1", vec!["unsupported GGUF version 1"], with(&|g| g.version = 1)),
        ("version 4", vec!["unsupported GGUF version 4"], with(&|g| g.version = 4)),
        (
            "duplicate metadata key",
            vec!["`general.name` appears twice"],
            with(&|g| g.metadata.push(("general.name".into(), s("again")))),
        ),
        (
            "arrays nested 5 deep",
            vec!["nested too deeply"],
            with(&|g| {
                let mut v = Value::Array(vec![Value::U8(1)]);
                for _ in 0..4 {
                    v = Value::Array(vec![v]);
                }
                g.set("x.nested", v);
            }),
        ),
        (
            "alignment 3",
            vec!["general.alignment 3", "power of two"],
            with(&|g| {
                g.set("general.alignment", Value::U32(3));
            }),
        ),
        (
            "alignment 0",
            vec!["general.alignment 0"],
            with(&|g| {
                g.set("general.alignment", Value::U32(0));
            }),
        ),
        (
            "duplicate tensor",
            vec!["tensor `output_norm.weight` appears twice"],
            with(&|g| {
                let t = g.tensor("output_norm.weight").clone();
                g.tensors.push(t);
            }),
        ),
        (
            "dims product overflows u64",
            vec!["blk.0.attn_q.weight", "overflow"],
            with(&|g| {
                g.tensor("blk.0.attn_q.weight").dims = vec![1 << 32, 1 << 32, 1 << 32];
            }),
        ),
        (
            "byte size overflows u64",
            vec!["output_norm.weight", "overflow"],
            with(&|g| {
                g.tensor("output_norm.weight").dims = vec![1 << 62];
            }),
        ),
        (
            "zero dimension",
            vec!["output_norm.weight", "zero dimension"],
            with(&|g| {
                g.tensor("output_norm.weight").dims = vec![32, 0];
            }),
        ),
        (
            "five dimensions",
            vec!["output_norm.weight", "5 dimensions"],
            with(&|g| {
                g.tensor("output_norm.weight").dims = vec![1, 1, 1, 1, 32];
            }),
        ),
        (
            "unknown ggml type",
            vec!["output_norm.weight", "type id 99, which is not a ggml type"],
            with(&|g| {
                g.tensor("output_norm.weight").ty = 99;
            }),
        ),
        (
            "data offset beyond the file",
            vec!["output_norm.weight", "past the end of the file"],
            with(&|g| {
                g.tensor("output_norm.weight").offset = Some(1 << 40);
            }),
        ),
        (
            "data offset overflowing u64",
            vec!["output_norm.weight", "overflows"],
            with(&|g| {
                g.tensor("output_norm.weight").offset = Some(!31);
            }),
        ),
        (
            "misaligned data offset",
            vec!["output_norm.weight", "not a multiple of the alignment 32"],
            with(&|g| {
                g.tensor("output_norm.weight").offset = Some(4);
            }),
        ),
        // Model metadata.
        (
            "no architecture",
            vec!["missing string metadata `general.architecture`"],
            with(&|g| {
                g.remove("general.architecture");
            }),
        ),
        (
            "architecture of the wrong type",
            vec!["`general.architecture` must be a string, found u32 7"],
            with(&|g| {
                g.set("general.architecture", Value::U32(7));
            }),
        ),
        (
            "unsupported architecture",
            vec![r#"architecture `gpt2` is not supported (supported: ["llama", "gemma3", "phi3", "qwen2", "qwen3"])"#],
            with(&|g| {
                g.set("general.architecture", s("gpt2"));
            }),
        ),
        (
            "embedding length as a string",
            vec!["`llama.embedding_length` must be a non-negative integer"],
            with(&|g| {
                g.set("llama.embedding_length", s("32"));
            }),
        ),
        (
            "negative block count",
            vec!["`llama.block_count` must be a non-negative integer, found i32 -1"],
            with(&|g| {
                g.set("llama.block_count", Value::I32(-1));
            }),
        ),
        (
            "no context length",
            vec!["missing integer metadata `llama.context_length`"],
            with(&|g| {
                g.remove("llama.context_length");
            }),
        ),
        (
            "zero heads",
            vec!["0 attention heads"],
            with(&|g| {
                g.set("llama.attention.head_count", Value::U32(0));
            }),
        ),
        (
            "heads not a multiple of KV heads",
            vec!["2 attention heads cannot share 3 KV heads"],
            with(&|g| {
                g.set("llama.attention.head_count_kv", Value::U32(3));
            }),
        ),
        (
            "vocab size disagreeing with the embedding",
            vec!["token_embd.weight", "expected 1000×32"],
            with(&|g| {
                g.set("llama.vocab_size", Value::U32(1000));
            }),
        ),
        // Tensors.
        (
            "missing attention tensor",
            vec!["missing tensor `blk.0.attn_q.weight`"],
            with(&|g| {
                g.remove_tensor("blk.0.attn_q.weight");
            }),
        ),
        (
            "missing token embedding",
            vec!["missing tensor `token_embd.weight`"],
            with(&|g| {
                g.remove_tensor("token_embd.weight");
            }),
        ),
        (
            "missing output norm",
            vec!["missing tensor `output_norm.weight`"],
            with(&|g| {
                g.remove_tensor("output_norm.weight");
            }),
        ),
        (
            "tensor of the wrong shape",
            vec!["blk.0.ffn_down.weight", "expected 32×64"],
            with(&|g| {
                g.tensor("blk.0.ffn_down.weight").dims = vec![32, 64];
            }),
        ),
        (
            "unsupported tensor type",
            vec!["blk.0.attn_q.weight", "unsupported tensor type Q8_1"],
            with(&|g| {
                let t = g.tensor("blk.0.attn_q.weight");
                t.ty = 9; // Q8_1 (an activation format, never a weight): 36 bytes per 32 values
                t.data.resize(32 * 36, 0);
            }),
        ),
        // Tokenizer metadata.
        (
            "no tokenizer model",
            vec!["missing string metadata `tokenizer.ggml.model`"],
            with(&|g| {
                g.remove("tokenizer.ggml.model");
            }),
        ),
        (
            "unsupported tokenizer model",
            vec!["unsupported tokenizer model `rwkv`"],
            with(&|g| {
                g.set("tokenizer.ggml.model", s("rwkv"));
            }),
        ),
        (
            "no tokens",
            vec!["missing metadata `tokenizer.ggml.tokens`"],
            with(&|g| {
                g.remove("tokenizer.ggml.tokens");
            }),
        ),
        (
            "no merges",
            vec!["missing metadata `tokenizer.ggml.merges`"],
            with(&|g| {
                g.remove("tokenizer.ggml.merges");
            }),
        ),
        (
            "tokens as one string",
            vec!["`tokenizer.ggml.tokens` must be an array of strings, found string"],
            with(&|g| {
                g.set("tokenizer.ggml.tokens", s("a b c"));
            }),
        ),
        (
            "tokens as integers",
            vec!["`tokenizer.ggml.tokens` must be an array of strings, but holds u32 1"],
            with(&|g| {
                g.set("tokenizer.ggml.tokens", Value::Array(vec![Value::U32(1), Value::U32(2)]));
            }),
        ),
        (
            "merge without a space",
            vec!["malformed BPE merge `Ġt`"],
            with(&|g| {
                g.set("tokenizer.ggml.merges", Value::Array(vec![s("Ġt")]));
            }),
        ),
        (
            "merge of unknown tokens",
            vec!["cannot build the BPE tokenizer"],
            with(&|g| {
                g.set("tokenizer.ggml.merges", Value::Array(vec![s("foo bar")]));
            }),
        ),
        (
            "token types as strings",
            vec!["`tokenizer.ggml.token_type` must be an array of integers"],
            with(&|g| {
                g.set("tokenizer.ggml.token_type", Value::Array(vec![s("normal")]));
            }),
        ),
        (
            "fewer token types than tokens",
            vec!["1 token types for 259 tokens"],
            with(&|g| {
                g.set("tokenizer.ggml.token_type", Value::Array(vec![Value::I32(1)]));
            }),
        ),
        (
            "BOS id outside the vocabulary",
            vec!["BOS token id 5000 is not in the vocabulary"],
            with(&|g| {
                g.set("tokenizer.ggml.bos_token_id", Value::U32(5000));
            }),
        ),
        (
            "chat template of the wrong type",
            vec!["`tokenizer.chat_template` must be a string"],
            with(&|g| {
                g.set("tokenizer.chat_template", Value::U32(1));
            }),
        ),
    ]
}

#[test]
fn broken_synthetic_models_give_load_errors() {
    let scratch = Scratch::new("spec");
    let mut report = Report::default();
    for (i, (case, expected, spec)) in spec_cases().into_iter().enumerate() {
        let path = scratch.write(&format!("case{i}.gguf"), &spec.to_bytes());
        report.check(case, &path, &expected, load_engine(&path));
        fs::remove_file(&path).unwrap();
    }
    report.finish("synthetic");
}

/// Defects no writer would produce: patched counts, lengths and type ids.
#[test]
fn patched_headers_give_load_errors() {
    let scratch = Scratch::new("patched");
    let intact = GgufSpec::tiny_llama().to_bytes();
    let patched = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = intact.clone();
        edit(&mut bytes);
        bytes
    };
    let huge = 1u64 << 60;
    let tokens_at = after_key(&intact, "tokenizer.ggml.tokens"); // type 9, item type, count
    let cases: Vec<(&str, Vec<&str>, Vec<u8>)> = vec![
        ("empty file", vec!["too short to be GGUF"], Vec::new()),
        ("three bytes", vec!["too short to be GGUF"], b"GGU".to_vec()),
        ("wrong magic", vec!["not a GGUF file"], patched(&|b| b[..4].copy_from_slice(b"GGML"))),
        ("text file", vec!["not a GGUF file"], b"model: smollm2\nthis is not a model\n".to_vec()),
        ("safetensors given as GGUF", vec!["not a GGUF file"], b"\x10\0\0\0\0\0\0\0{\"a\":\"b\"}      ".to_vec()),
        ("version u32::MAX", vec!["unsupported GGUF version 4294967295"], patched(&|b| patch_u32(b, 4, u32::MAX))),
        ("tensor count 2^60", vec!["1152921504606846976 tensors"], patched(&|b| patch_u64(b, 8, huge))),
        ("metadata count 2^60", vec!["1152921504606846976 metadata entries"], patched(&|b| patch_u64(b, 16, huge))),
        ("tensor count past the file", vec!["more than the file can hold"], patched(&|b| patch_u64(b, 8, 100_000))),
        ("metadata count past the file", vec!["more than the file can hold"], patched(&|b| patch_u64(b, 16, 100_000))),
        ("metadata count one too many", vec![], patched(&|b| patch_u64(b, 16, 18))),
        ("key length 2^60", vec!["truncated"], patched(&|b| patch_u64(b, 24, huge))),
        ("key length u64::MAX", vec!["truncated"], patched(&|b| patch_u64(b, 24, u64::MAX))),
        (
            "array length 2^60",
            vec!["tokenizer.ggml.tokens", "1152921504606846976 array items"],
            patched(&|b| patch_u64(b, tokens_at + 8, huge)),
        ),
        (
            "array length past the file",
            vec!["tokenizer.ggml.tokens", "more than the file can hold"],
            patched(&|b| patch_u64(b, tokens_at + 8, 1_000_000)),
        ),
        (
            "string length 2^60 inside an array",
            vec!["tokenizer.ggml.tokens", "truncated"],
            patched(&|b| patch_u64(b, tokens_at + 16, huge)),
        ),
        (
            "unknown array item type",
            vec!["tokenizer.ggml.tokens", "unknown array item type 13"],
            patched(&|b| patch_u32(b, tokens_at + 4, 13)),
        ),
        (
            "unknown value type",
            vec!["general.name", "unknown metadata value type 99"],
            patched(&|b| {
                let at = after_key(b, "general.name");
                patch_u32(b, at, 99)
            }),
        ),
        (
            "tensor with 2^31 dimensions",
            vec!["output_norm.weight", "2147483648 dimensions"],
            patched(&|b| {
                let at = after_tensor_name(b, "output_norm.weight");
                patch_u32(b, at, 1 << 31)
            }),
        ),
        (
            "tensor name length 2^60",
            vec!["truncated"],
            patched(&|b| {
                let at = after_tensor_name(b, "output_norm.weight") - "output_norm.weight".len() - 8;
                patch_u64(b, at, huge)
            }),
        ),
    ];
    let mut report = Report::default();
    for (i, (case, expected, bytes)) in cases.into_iter().enumerate() {
        let path = scratch.write(&format!("patched{i}.gguf"), &bytes);
        report.check(case, &path, &expected, load_engine(&path));
    }
    report.finish("patched");
}

/// Counts the file could back (it is large, and sparse on disk) but no real model has: refused
/// by the reader's limits before anything proportional is allocated.
#[test]
fn counts_a_large_file_could_back_are_refused_without_a_huge_allocation() {
    let scratch = Scratch::new("sparse");
    let sparse = |name: &str, header: &[u8], len: u64| {
        let path = scratch.0.join(name);
        let mut file = OpenOptions::new().create(true).truncate(true).write(true).open(&path).unwrap();
        file.write_all(header).unwrap();
        file.set_len(len).unwrap();
        path
    };
    let header = |tensors: u64, kvs: u64| {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(tensors.to_le_bytes());
        b.extend(kvs.to_le_bytes());
        b
    };
    // A u8 array of 100M items in a file big enough to hold them: read naively, a 3.2 GB
    // Vec<Value> (32 bytes an item).
    let mut big_array = header(0, 1);
    big_array.extend(3u64.to_le_bytes());
    big_array.extend(b"big");
    big_array.extend(9u32.to_le_bytes());
    big_array.extend(0u32.to_le_bytes());
    big_array.extend(100_000_000u64.to_le_bytes());
    // Two arrays under the per-array limit that together pass the total limit.
    let mut two_arrays = header(0, 3);
    for key in [b"aa", b"bb", b"cc"] {
        two_arrays.extend(2u64.to_le_bytes());
        two_arrays.extend(key);
        two_arrays.extend(9u32.to_le_bytes());
        two_arrays.extend(0u32.to_le_bytes());
        two_arrays.extend(MAX_ARRAY_ITEMS.to_le_bytes());
        two_arrays.resize(two_arrays.len() + MAX_ARRAY_ITEMS as usize, 0);
    }
    // Millions of tensor / metadata entries the file could hold: reserved up front, 320 MB
    // and 480 MB.
    let cases = [
        ("array of 100M items", vec!["`big`", "100000000 array items", "limit"], big_array, 128 << 20),
        ("arrays past the total item limit", vec!["`cc`", "8388608 items in all"], two_arrays, 16 << 20),
        ("5M tensors in a 256 MiB file", vec!["5000000 tensors", "limit"], header(5_000_000, 0), 256 << 20),
        (
            "2^22 metadata entries in a 64 MiB file",
            vec!["4194304 metadata entries", "limit"],
            header(0, 1 << 22),
            64 << 20,
        ),
        // A million metadata entries of zero bytes (empty key, u8 value): the second is a duplicate.
        ("2^20 zero-filled metadata entries", vec!["metadata key `` appears twice"], header(0, 1 << 20), 16 << 20),
    ];
    let mut report = Report::default();
    for (i, (case, expected, bytes, len)) in cases.into_iter().enumerate() {
        let path = sparse(&format!("sparse{i}.gguf"), &bytes, len);
        report.check(case, &path, &expected, load_engine(&path));
        fs::remove_file(&path).unwrap();
    }
    report.finish("sparse");
}

/// Every prefix of the synthetic model is rejected as truncated, in memory (thousands of cuts)
/// and through files and the engine at the section boundaries.
#[test]
fn every_prefix_of_the_synthetic_model_is_rejected() {
    let intact = GgufSpec::tiny_llama().to_bytes();
    let mut report = Report::default();
    let data_start = GgufFile::from_bytes("tiny", intact.clone()).unwrap().tensors()[0].offset;
    // Every cut through the header, metadata and tensor directory; then every 61st byte of data.
    let cuts = (0..=data_start + 1).chain((data_start + 2..intact.len()).step_by(61)).chain([intact.len() - 1]);
    for n in cuts {
        let name = PathBuf::from(format!("prefix-{n}.gguf"));
        let expected: &[&str] = if n < 4 { &["too short"] } else { &["truncated"] };
        let result = measured(|| GgufFile::from_bytes(&name, intact[..n].to_vec()));
        report.check(&format!("in-memory prefix of {n} bytes"), &name, expected, result);
    }
    let scratch = Scratch::new("prefix");
    for n in [4, 23, 24, 100, 1000, data_start - 40, data_start - 1, data_start, data_start + 1, intact.len() - 1] {
        let path = scratch.write(&format!("prefix{n}.gguf"), &intact[..n]);
        let expected: &[&str] = if n < 4 { &["too short"] } else { &["truncated"] };
        report.check(&format!("file prefix of {n} bytes"), &path, expected, load_engine(&path));
    }
    report.finish("synthetic prefix");
}

// ---------- the real model ----------

#[test]
fn the_real_model_cut_short_anywhere_is_rejected() {
    let real = common::smollm2_path();
    let len = fs::metadata(&real).unwrap().len();
    let gguf = GgufFile::open(&real).unwrap();
    let data_start = gguf.tensors().iter().map(|t| t.offset as u64).min().unwrap();
    let last_tensor_end = gguf.tensors().iter().map(|t| (t.offset + t.size) as u64).max().unwrap();
    drop(gguf);
    let scratch = Scratch::new("real");
    let path = scratch.0.join("SmolLM2-cut.gguf");
    let cuts = [
        0,
        1,
        4,
        8,
        20,
        24,
        25,
        1_000,
        100_000,
        1_000_000,
        data_start - 5_000, // in the tensor directory
        data_start - 1,
        data_start,
        data_start + 1,
        len / 2,
        last_tensor_end - 1,
    ];
    let mut report = Report::default();
    for n in cuts {
        let head = n.min(2 << 20);
        if n <= head {
            let mut bytes = vec![0u8; n as usize];
            std::io::Read::read_exact(&mut File::open(&real).unwrap(), &mut bytes).unwrap();
            fs::write(&path, &bytes).unwrap();
        } else {
            fs::copy(&real, &path).unwrap();
            OpenOptions::new().write(true).open(&path).unwrap().set_len(n).unwrap();
        }
        let expected: &[&str] = if n < 4 { &["too short"] } else { &["truncated"] };
        report.check(&format!("SmolLM2 cut to {n} of {len} bytes"), &path, expected, load_engine(&path));
    }
    fs::remove_file(&path).unwrap();
    report.finish("real-model cut");
}

#[test]
fn paths_that_are_not_model_files_are_rejected() {
    let scratch = Scratch::new("paths");
    let mut report = Report::default();
    let missing = scratch.0.join("no-such-model.gguf");
    report.check("nonexistent path", &missing, &["cannot open file"], load_engine(&missing));
    let dir = scratch.0.join("a-folder.gguf");
    fs::create_dir(&dir).unwrap();
    report.check("a directory", &dir, &["is a directory"], load_engine(&dir));
    let devnull = PathBuf::from("/dev/null");
    report.check("a character device", &devnull, &["not a regular file"], load_engine(&devnull));

    // A tokenizer.json beside the model is used instead of the GGUF's vocabulary: a corrupt one
    // is named, as is a missing one given explicitly.
    let beside = scratch.0.join("with-tokenizer");
    fs::create_dir(&beside).unwrap();
    let model = beside.join("tiny.gguf");
    fs::write(&model, GgufSpec::tiny_llama().to_bytes()).unwrap();
    let tokenizer_json = beside.join("tokenizer.json");
    fs::write(&tokenizer_json, b"{\"model\": 42}").unwrap();
    report.check("corrupt tokenizer.json beside the model", &tokenizer_json, &[], load_engine(&model));
    fs::remove_file(&tokenizer_json).unwrap();
    let absent = scratch.0.join("absent-tokenizer.json");
    let config = EngineConfig { tokenizer: Some(absent.clone()), ..config(&model) };
    report.check("missing explicit tokenizer.json", &absent, &[], measured(|| Engine::new(config)));
    report.finish("path");
}

// ---------- the BERT embedder folder ----------

/// A copy of the MiniLM folder (symlinks, so no 87 MiB copy) with `broken` replaced by
/// `contents`, or removed when `contents` is `None`.
fn bert_dir(scratch: &Scratch, name: &str, broken: &str, contents: Option<&[u8]>) -> (PathBuf, PathBuf) {
    let real = common::minilm_dir();
    let dir = scratch.0.join(name);
    fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    for file in
        ["config.json", "1_Pooling/config.json", "sentence_bert_config.json", "tokenizer.json", "model.safetensors"]
    {
        if file != broken {
            std::os::unix::fs::symlink(real.join(file), dir.join(file)).unwrap();
        }
    }
    let broken_path = dir.join(broken);
    if let Some(bytes) = contents {
        fs::write(&broken_path, bytes).unwrap();
    }
    (dir, broken_path)
}

/// A valid safetensors file with one F32 tensor that no BERT model has.
fn safetensors_without_bert_tensors() -> Vec<u8> {
    let header = br#"{"foo":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend([0u8; 8]);
    out
}

#[test]
fn broken_embedder_folders_give_load_errors() {
    let scratch = Scratch::new("bert");
    let pool = Arc::new(ThreadPool::new(1).expect("start the thread pool"));
    let real_weights = common::minilm_dir().join("model.safetensors");
    let mut weights_head = vec![0u8; 1 << 20];
    std::io::Read::read_exact(&mut File::open(&real_weights).unwrap(), &mut weights_head).unwrap();
    let mut huge_header = (1u64 << 60).to_le_bytes().to_vec();
    huge_header.extend(b"{}");
    // (case, file to break, its new contents or None to delete it, expected message parts)
    type Case<'a> = (&'a str, &'a str, Option<Vec<u8>>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        ("no config.json", "config.json", None, vec!["cannot read"]),
        ("config.json not JSON", "config.json", Some(b"{hidden_size: 384".to_vec()), vec!["invalid JSON"]),
        ("no pooling config", "1_Pooling/config.json", None, vec!["cannot read"]),
        ("no tokenizer.json", "tokenizer.json", None, vec![]),
        ("tokenizer.json not JSON", "tokenizer.json", Some(b"\x00\x01garbage".to_vec()), vec![]),
        ("tokenizer.json an empty object", "tokenizer.json", Some(b"{}".to_vec()), vec![]),
        ("no model.safetensors", "model.safetensors", None, vec!["cannot read"]),
        ("empty model.safetensors", "model.safetensors", Some(Vec::new()), vec!["not a valid safetensors file"]),
        (
            "safetensors header length 2^60",
            "model.safetensors",
            Some(huge_header),
            vec!["not a valid safetensors file"],
        ),
        ("safetensors of garbage", "model.safetensors", Some(vec![0xAB; 4096]), vec!["not a valid safetensors file"]),
        ("safetensors cut to 1 MiB", "model.safetensors", Some(weights_head), vec!["not a valid safetensors file"]),
        (
            "safetensors of another model",
            "model.safetensors",
            Some(safetensors_without_bert_tensors()),
            vec!["no tensor `embeddings.word_embeddings.weight`"],
        ),
    ];
    let mut report = Report::default();
    for (i, (case, broken, contents, expected)) in cases.into_iter().enumerate() {
        let (dir, broken_path) = bert_dir(&scratch, &format!("bert{i}"), broken, contents.as_deref());
        report.check(case, &broken_path, &expected, measured(|| BertEmbedder::load(&dir, Arc::clone(&pool))));
    }
    let missing = scratch.0.join("no-such-folder");
    let result = measured(|| BertEmbedder::load(&missing, Arc::clone(&pool)));
    report.check("nonexistent folder", &missing, &["config.json", "cannot read"], result);

    // Through the engine: the chat model loads, then the embedder's error comes out whole.
    let (dir, broken_path) = bert_dir(&scratch, "bert-engine", "model.safetensors", Some(b"not weights"));
    let config = EngineConfig { embedding_model: Some(dir), ..config(&common::smollm2_path()) };
    let result = measured(|| Engine::new(config));
    report.check("engine with a corrupt embedder", &broken_path, &["not a valid safetensors file"], result);
    report.finish("embedder");
}

/// With `block_count` 0 no layer tensor would check the head size, yet the RoPE table is sized
/// by `attention.key_length` (2^40 here: a 4 TiB allocation that aborted the process before
/// `LlamaConfig::from_gguf` bounded it).
#[test]
fn zero_layers_with_an_absurd_head_size_is_rejected() {
    let scratch = Scratch::new("zero-layers");
    let mut spec = GgufSpec::tiny_llama();
    spec.set("llama.block_count", Value::U32(0))
        .set("llama.attention.key_length", Value::U64(1 << 40))
        .set("llama.rope.dimension_count", Value::U64(1 << 40));
    let path = scratch.write("zero-layers.gguf", &spec.to_bytes());
    let mut report = Report::default();
    report.check("0 layers, head size 2^40", &path, &["llama.block_count"], load_engine(&path));
    report.finish("zero-layer");
}
