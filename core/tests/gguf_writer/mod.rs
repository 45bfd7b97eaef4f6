//! A small GGUF writer for tests: a tiny but complete llama model (1 layer, hidden size 32 or less,
//! a 259-token byte-level BPE vocabulary) that the engine loads and runs, and the knobs to
//! break it one way at a time.
#![allow(dead_code)]

use cortexstream::gguf::Value;
use cortexstream::gguf_write::{push_string, push_value, value_type_id};

pub const VOCAB: u64 = 259;
const F32: u32 = 0;

/// One tensor to write. `offset`, when set, replaces the offset the writer would compute.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
    pub offset: Option<u64>,
}

/// A whole GGUF file before serialisation.
#[derive(Debug, Clone)]
pub struct GgufSpec {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorSpec>,
}

/// GPT-2's byte -> character table (the byte-level BPE alphabet).
pub fn gpt2_byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 256;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                let c = char::from_u32(next).unwrap();
                next += 1;
                c
            }
        })
        .collect()
}

/// Deterministic small weights, so every run builds the same file.
fn weights(count: u64, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(count as usize * 4);
    for _ in 0..count {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let unit = (state >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
        out.extend_from_slice(&((unit - 0.5) * 0.2).to_le_bytes());
    }
    out
}

fn ones(count: u64) -> Vec<u8> {
    (0..count).flat_map(|_| 1f32.to_le_bytes()).collect()
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

/// `loaded` is a model-load error whose text (`cannot load model {path}: {message}`) contains
/// every one of `needles`.
pub fn assert_load_refused<T: std::fmt::Debug>(loaded: Result<T, cortexstream::Error>, needles: &[&str]) {
    match loaded {
        Err(err @ cortexstream::Error::ModelLoad { .. }) => {
            let text = err.to_string();
            for needle in needles {
                assert!(text.contains(needle), "{text:?} should name {needle:?}");
            }
        }
        other => panic!("expected a load error naming {needles:?}, got {other:?}"),
    }
}

impl GgufSpec {
    /// The all-F32 tiny fixture of `family` (`tests/fixtures/{family}/tiny-f32.gguf`) as an
    /// editable spec.
    pub fn tiny_fixture(family: &str) -> Self {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(family);
        Self::from_f32_file(&path.join("tiny-f32.gguf"))
    }

    /// An existing all-F32 GGUF (a committed fixture) as an editable spec, its metadata sorted
    /// by key.
    pub fn from_f32_file(path: &std::path::Path) -> Self {
        let gguf = cortexstream::gguf::GgufFile::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let mut metadata: Vec<(String, Value)> = gguf.metadata().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        metadata.sort_by(|a, b| a.0.cmp(&b.0));
        let tensors = gguf
            .tensors()
            .iter()
            .map(|t| {
                assert_eq!(t.ty, cortexstream::gguf::GgmlType::F32, "{}", t.name);
                let (_, data) = gguf.tensor_bytes(&t.name).expect("tensor bytes");
                TensorSpec {
                    name: t.name.clone(),
                    dims: t.dims.iter().map(|&d| d as u64).collect(),
                    ty: F32,
                    data: data.to_vec(),
                    offset: None,
                }
            })
            .collect();
        Self { version: 3, metadata, tensors }
    }

    /// A complete llama model the engine loads and runs (random weights: the text is noise):
    /// hidden size 32, 2 heads sharing 1 KV head, FFN 64; 75 KB.
    pub fn tiny_llama() -> Self {
        Self::llama(32, 64)
    }

    /// The same with hidden size `hidden` (2 heads of `hidden / 2`, 1 KV head) and FFN `ffn`.
    pub fn llama(hidden: u64, ffn: u64) -> Self {
        let kv_dim = hidden / 2;
        let mut tokens: Vec<String> = gpt2_byte_chars().iter().map(|c| c.to_string()).collect();
        tokens.extend(["Ġt", "<|im_start|>", "<|im_end|>"].map(String::from));
        assert_eq!(tokens.len() as u64, VOCAB);
        let token_types = Value::Array((0..VOCAB).map(|id| Value::I32(if id >= 257 { 3 } else { 1 })).collect());
        let metadata = vec![
            ("general.architecture".into(), Value::String("llama".into())),
            ("general.name".into(), Value::String("tiny-test".into())),
            ("llama.context_length".into(), Value::U32(128)),
            ("llama.embedding_length".into(), Value::U32(hidden as u32)),
            ("llama.block_count".into(), Value::U32(1)),
            ("llama.feed_forward_length".into(), Value::U32(ffn as u32)),
            ("llama.attention.head_count".into(), Value::U32(2)),
            ("llama.attention.head_count_kv".into(), Value::U32(1)),
            ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(1e-5)),
            ("llama.rope.freq_base".into(), Value::F32(10_000.0)),
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String("default".into())),
            ("tokenizer.ggml.tokens".into(), Value::Array(tokens.into_iter().map(Value::String).collect())),
            ("tokenizer.ggml.token_type".into(), token_types),
            ("tokenizer.ggml.merges".into(), strings(&["Ġ t"])),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(257)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(258)),
        ];
        let mut seed = 0;
        let mut matrix = |name: &str, cols: u64, rows: u64| {
            seed += 1;
            TensorSpec {
                name: name.into(),
                dims: vec![cols, rows],
                ty: F32,
                data: weights(cols * rows, seed),
                offset: None,
            }
        };
        let mut tensors = vec![
            matrix("token_embd.weight", hidden, VOCAB),
            matrix("blk.0.attn_q.weight", hidden, hidden),
            matrix("blk.0.attn_k.weight", hidden, kv_dim),
            matrix("blk.0.attn_v.weight", hidden, kv_dim),
            matrix("blk.0.attn_output.weight", hidden, hidden),
            matrix("blk.0.ffn_gate.weight", hidden, ffn),
            matrix("blk.0.ffn_up.weight", hidden, ffn),
            matrix("blk.0.ffn_down.weight", ffn, hidden),
        ];
        for name in ["blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"] {
            tensors.push(TensorSpec {
                name: name.into(),
                dims: vec![hidden],
                ty: F32,
                data: ones(hidden),
                offset: None,
            });
        }
        Self { version: 3, metadata, tensors }
    }

    /// Sets `key`, replacing an existing entry in place or appending a new one.
    pub fn set(&mut self, key: &str, value: Value) -> &mut Self {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key.into(), value)),
        }
        self
    }

    pub fn remove(&mut self, key: &str) -> &mut Self {
        let before = self.metadata.len();
        self.metadata.retain(|(k, _)| k != key);
        assert_ne!(before, self.metadata.len(), "no metadata `{key}` to remove");
        self
    }

    pub fn tensor(&mut self, name: &str) -> &mut TensorSpec {
        self.tensors.iter_mut().find(|t| t.name == name).unwrap_or_else(|| panic!("no tensor `{name}`"))
    }

    pub fn remove_tensor(&mut self, name: &str) -> &mut Self {
        let before = self.tensors.len();
        self.tensors.retain(|t| t.name != name);
        assert_ne!(before, self.tensors.len(), "no tensor `{name}` to remove");
        self
    }

    fn alignment(&self) -> u64 {
        self.metadata.iter().find(|(k, _)| k == "general.alignment").and_then(|(_, v)| v.as_u64()).unwrap_or(32)
    }

    /// The spec as an opened in-memory GGUF.
    pub fn to_gguf(&self) -> cortexstream::gguf::GgufFile {
        cortexstream::gguf::GgufFile::from_bytes("edited.gguf", self.to_bytes()).expect("a readable GGUF")
    }

    /// The file's bytes. Tensor data follows the tensor directory, each tensor aligned.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            push_string(&mut out, key);
            out.extend(value_type_id(value).to_le_bytes());
            push_value(&mut out, value);
        }
        // A zero alignment is written as asked but laid out with 1 (the reader rejects it).
        let alignment = self.alignment().max(1);
        let mut offsets = Vec::new();
        let mut next = 0u64;
        for tensor in &self.tensors {
            offsets.push(next);
            next = (next + tensor.data.len() as u64).div_ceil(alignment) * alignment;
        }
        for (tensor, &offset) in self.tensors.iter().zip(&offsets) {
            push_string(&mut out, &tensor.name);
            out.extend((tensor.dims.len() as u32).to_le_bytes());
            for d in &tensor.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(tensor.ty.to_le_bytes());
            out.extend(tensor.offset.unwrap_or(offset).to_le_bytes());
        }
        let data_start = (out.len() as u64).div_ceil(alignment) * alignment;
        out.resize(data_start as usize, 0);
        for (tensor, &offset) in self.tensors.iter().zip(&offsets) {
            out.resize((data_start + offset) as usize, 0);
            out.extend(&tensor.data);
        }
        out
    }
}

/// Where `needle` first occurs in `haystack` (panics if absent: the test is wrong then).
pub fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).position(|w| w == needle).unwrap_or_else(|| panic!("{needle:?} not found"))
}

/// Byte position right after the key string of metadata `key` (where its type id starts).
pub fn after_key(bytes: &[u8], key: &str) -> usize {
    let mut needle = (key.len() as u64).to_le_bytes().to_vec();
    needle.extend(key.as_bytes());
    find(bytes, &needle) + needle.len()
}

/// Byte position right after the name string of tensor `name` in the tensor directory.
pub fn after_tensor_name(bytes: &[u8], name: &str) -> usize {
    after_key(bytes, name)
}

pub fn patch_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

pub fn patch_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}
