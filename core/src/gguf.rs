//! A bounds-checked reader for GGUF files (versions 2 and 3).
//!
//! The file is memory-mapped; tensor data is borrowed straight from the map, so loading
//! a model costs no copy beyond what a kernel chooses to repack. Every length read from
//! the file is checked against the bytes that remain, so a corrupt or truncated file
//! gives a [`Error::ModelLoad`] naming the problem instead of a panic or a huge allocation.
//!
//! "No huge allocation" is enforced two ways: every count is checked against the smallest
//! number of bytes its entries could take in what is left of the file, and counts far past
//! what any real model has ([`MAX_TENSORS`], [`MAX_METADATA_ENTRIES`], [`MAX_ARRAY_ITEMS`],
//! [`MAX_TOTAL_ARRAY_ITEMS`]) are refused outright. Capacities reserved up front are capped
//! too, so memory grows only with entries actually read. `core/tests/malformed_models.rs` checks this with a counting
//! allocator and `fuzz/` fuzzes [`GgufFile::from_bytes`].

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// Most tensors a file may declare. Real models have a few hundred to a few thousand.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Most metadata entries a file may declare. Real models have a few dozen.
pub const MAX_METADATA_ENTRIES: u64 = 1 << 20;
/// Most items in one metadata array. The largest real arrays (vocabularies, BPE merges) hold
/// well under a million; the limit keeps one array's `Vec<Value>` (32 bytes an item) at
/// 128 MiB even when the file is large enough to back a longer one.
pub const MAX_ARRAY_ITEMS: u64 = 1 << 22;
/// Most array items in all metadata together (32 bytes each in memory): ten times what the
/// largest real vocabularies need, so a file of small items cannot blow up 32-fold in memory.
pub const MAX_TOTAL_ARRAY_ITEMS: u64 = 1 << 23;
/// Capacity reserved before reading a counted list; beyond it the list grows as entries parse.
const MAX_RESERVE: usize = 4096;

/// Element types of ggml tensors, with their on-disk ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    IQ4NL,
    IQ4XS,
    BF16,
}

/// Every type id ggml has ever assigned, by its ggml name (`ggml_type` in ggml's `ggml.h`), so
/// that a tensor of a type this engine cannot load is reported as `IQ2_XXS`, not as "id 16".
/// Ids ggml has retired are named with a note; gaps are ids ggml never used.
const GGML_TYPE_NAMES: &[(u32, &str)] = &[
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (4, "Q4_2 (removed from ggml)"),
    (5, "Q4_3 (removed from ggml)"),
    (6, "Q5_0"),
    (7, "Q5_1"),
    (8, "Q8_0"),
    (9, "Q8_1"),
    (10, "Q2_K"),
    (11, "Q3_K"),
    (12, "Q4_K"),
    (13, "Q5_K"),
    (14, "Q6_K"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (30, "BF16"),
    (31, "Q4_0_4_4 (removed from GGUF files)"),
    (32, "Q4_0_4_8 (removed from GGUF files)"),
    (33, "Q4_0_8_8 (removed from GGUF files)"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (36, "IQ4_NL_4_4 (removed from GGUF files)"),
    (37, "IQ4_NL_4_8 (removed from GGUF files)"),
    (38, "IQ4_NL_8_8 (removed from GGUF files)"),
    (39, "MXFP4"),
];

/// The ggml name of type `id` (`"Q4_K"`, `"IQ2_XXS"`), `None` for an id ggml never assigned.
pub fn ggml_type_name(id: u32) -> Option<&'static str> {
    GGML_TYPE_NAMES.iter().find(|(known, _)| *known == id).map(|(_, name)| *name)
}

/// llama.cpp's names of the `general.file_type` values (`llama_ftype`): the quantization a
/// file was made with, as Ollama's `quantization_level` reports it.
const FILE_TYPE_NAMES: &[(u64, &str)] = &[
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (7, "Q8_0"),
    (8, "Q5_0"),
    (9, "Q5_1"),
    (10, "Q2_K"),
    (11, "Q3_K_S"),
    (12, "Q3_K_M"),
    (13, "Q3_K_L"),
    (14, "Q4_K_S"),
    (15, "Q4_K_M"),
    (16, "Q5_K_S"),
    (17, "Q5_K_M"),
    (18, "Q6_K"),
    (19, "IQ2_XXS"),
    (20, "IQ2_XS"),
    (21, "Q2_K_S"),
    (22, "IQ3_XS"),
    (23, "IQ3_XXS"),
    (24, "IQ1_S"),
    (25, "IQ4_NL"),
    (26, "IQ3_S"),
    (27, "IQ3_M"),
    (28, "IQ2_S"),
    (29, "IQ2_M"),
    (30, "IQ4_XS"),
    (31, "IQ1_M"),
    (32, "BF16"),
    (36, "TQ1_0"),
    (37, "TQ2_0"),
    (38, "MXFP4"),
];

/// The name of a `general.file_type` value (`"Q4_K_M"`), `None` for one llama.cpp never assigned.
pub fn file_type_name(id: u64) -> Option<&'static str> {
    FILE_TYPE_NAMES.iter().find(|(known, _)| *known == id).map(|(_, name)| *name)
}

/// The message for a tensor whose type id the reader has no block layout for.
fn unloadable_type(tensor: &str, id: u32) -> String {
    match ggml_type_name(id) {
        Some(name) => format!("tensor `{tensor}` has ggml type {name} (type id {id}), which cortexstream cannot load"),
        None => format!("tensor `{tensor}` has type id {id}, which is not a ggml type (corrupt or newer file)"),
    }
}

impl GgmlType {
    /// The type's ggml name, as llama.cpp prints it (`Q4_K`, `BF16`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q8_1 => "Q8_1",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
            Self::Q8K => "Q8_K",
            Self::IQ4NL => "IQ4_NL",
            Self::IQ4XS => "IQ4_XS",
            Self::BF16 => "BF16",
        }
    }

    /// The type's id in GGUF files (`ggml_type`).
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q8_1 => 9,
            Self::Q2K => 10,
            Self::Q3K => 11,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::Q8K => 15,
            Self::IQ4NL => 20,
            Self::IQ4XS => 23,
            Self::BF16 => 30,
        }
    }

    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            15 => Self::Q8K,
            20 => Self::IQ4NL,
            23 => Self::IQ4XS,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block)
    pub fn block_layout(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q8_1 => (32, 36),
            Self::Q2K => (256, 84),
            Self::Q3K => (256, 110),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
            Self::Q8K => (256, 292),
            Self::IQ4NL => (32, 18),
            Self::IQ4XS => (256, 136),
        }
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    /// The value as a signed integer.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float (integers are converted).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The type and, for scalars, the value, for error messages (`u32 7`, `array of 3`).
    pub fn describe(&self) -> String {
        match self {
            Value::String(s) if s.len() > 40 => format!("a string of {} bytes", s.len()),
            Value::String(s) => format!("string {s:?}"),
            Value::Array(items) => format!("an array of {} items", items.len()),
            Value::U8(v) => format!("u8 {v}"),
            Value::I8(v) => format!("i8 {v}"),
            Value::U16(v) => format!("u16 {v}"),
            Value::I16(v) => format!("i16 {v}"),
            Value::U32(v) => format!("u32 {v}"),
            Value::I32(v) => format!("i32 {v}"),
            Value::U64(v) => format!("u64 {v}"),
            Value::I64(v) => format!("i64 {v}"),
            Value::F32(v) => format!("f32 {v}"),
            Value::F64(v) => format!("f64 {v}"),
            Value::Bool(v) => format!("bool {v}"),
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the contiguous (innermost) one.
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    /// Byte range of the data inside the file.
    pub offset: usize,
    pub size: usize,
}

impl TensorInfo {
    pub fn element_count(&self) -> usize {
        self.dims.iter().product()
    }
}

/// The bytes of a GGUF: mapped from a file, or owned (parsed from memory).
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(map) => map,
            Bytes::Owned(bytes) => bytes,
        }
    }
}

/// An opened GGUF file: metadata, tensor directory and the mapped bytes.
pub struct GgufFile {
    path: PathBuf,
    bytes: Bytes,
    version: u32,
    metadata: HashMap<String, Value>,
    /// The metadata keys in the order the file lists them.
    metadata_keys: Vec<String>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and parses `path`. Fails with [`Error::ModelLoad`] naming the file and the problem.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::model_load(&path, format!("cannot open file: {e}")))?;
        let kind = file.metadata().map_err(|e| Error::model_load(&path, format!("cannot stat file: {e}")))?;
        if kind.is_dir() {
            return Err(Error::model_load(&path, "is a directory, not a GGUF file"));
        }
        if !kind.is_file() {
            return Err(Error::model_load(&path, "is not a regular file"));
        }
        // SAFETY: the map is read-only; we assume the model file is not truncated by
        // another process while loaded, as every mmap-based loader does.
        let mmap =
            unsafe { Mmap::map(&file) }.map_err(|e| Error::model_load(&path, format!("cannot map file: {e}")))?;
        Self::parse(path, Bytes::Mapped(mmap))
    }

    /// Parses a GGUF held in memory (fuzzing, tests, embedded models). `name` stands for the
    /// file in error messages and is what [`GgufFile::path`] returns.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(name.into(), Bytes::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: Bytes) -> Result<Self> {
        let parsed = Parser { bytes: &bytes, pos: 0, array_items_left: MAX_TOTAL_ARRAY_ITEMS }
            .parse()
            .map_err(|message| Error::model_load(&path, message))?;
        let (version, metadata, metadata_keys, tensors) = parsed;
        let tensor_index = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(Self { path, bytes, version, metadata, metadata_keys, tensors, tensor_index })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.metadata
    }

    /// The metadata keys in file order (a file rewritten with the same order keeps its bytes).
    pub fn metadata_keys(&self) -> &[String] {
        &self.metadata_keys
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A metadata string, or a load error naming the key and what is wrong with it.
    pub fn require_str(&self, key: &str) -> Result<&str> {
        let value = self.require(key, "string")?;
        value.as_str().ok_or_else(|| self.wrong_type(key, "a string", value))
    }

    /// A metadata unsigned integer, or a load error naming the key and what is wrong with it.
    pub fn require_u64(&self, key: &str) -> Result<u64> {
        let value = self.require(key, "integer")?;
        value.as_u64().ok_or_else(|| self.wrong_type(key, "a non-negative integer", value))
    }

    fn require(&self, key: &str, kind: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| Error::model_load(&self.path, format!("missing {kind} metadata `{key}`")))
    }

    /// A load error for metadata `key` holding `found` where `expected` was needed.
    pub fn wrong_type(&self, key: &str, expected: &str, found: &Value) -> Error {
        Error::model_load(&self.path, format!("metadata `{key}` must be {expected}, found {}", found.describe()))
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor, or a load error naming the missing tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info =
            self.tensor_info(name).ok_or_else(|| Error::model_load(&self.path, format!("missing tensor `{name}`")))?;
        // In bounds: the parser checked every tensor's range against the file length.
        Ok((info, &self.bytes[info.offset..info.offset + info.size]))
    }

    /// Says that tensor `info`'s bytes will not be read through the map again (the caller has
    /// copied them into memory of its own): the process stops holding their pages, so a model
    /// is not resident twice (mapped file and regrouped copy) at the peak of its load. Only
    /// about memory: a later read faults the same bytes back in from the file.
    pub fn release_tensor_pages(&self, info: &TensorInfo) {
        #[cfg(unix)]
        if let Bytes::Mapped(map) = &self.bytes {
            // In bounds: the parser checked every tensor's range against the file length.
            // SAFETY: the map is a read-only file mapping, so MADV_DONTNEED only drops this
            // process's page-table entries: any later read (a borrowed slice included) sees the
            // file's unchanged bytes again. Failure just leaves the pages resident.
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, info.offset, info.size) };
        }
        #[cfg(not(unix))]
        let _ = info;
    }

    /// All bytes of the file.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

type Parsed = (u32, HashMap<String, Value>, Vec<String>, Vec<TensorInfo>);

/// Cursor over the mapped bytes; every read is bounds-checked.
struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// What is left of [`MAX_TOTAL_ARRAY_ITEMS`].
    array_items_left: u64,
}

// Arrays nest at most this deep; a deeper one is treated as corruption.
const MAX_ARRAY_DEPTH: usize = 4;

/// Fewest bytes one metadata value of type `ty` takes in the file (`None`: unknown type).
fn min_value_bytes(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,  // length prefix of an empty string
        9 => 12, // item type + count of an empty array
        10..=12 => 8,
        _ => return None,
    })
}

impl<'a> Parser<'a> {
    fn parse(mut self) -> std::result::Result<Parsed, String> {
        let magic = self.take(4).map_err(|_| "file is too short to be GGUF".to_string())?;
        if magic != GGUF_MAGIC {
            return Err("not a GGUF file (bad magic bytes)".into());
        }
        let version = self.u32()?;
        if !(2..=3).contains(&version) {
            return Err(format!("unsupported GGUF version {version} (supported: 2, 3)"));
        }
        let tensor_count = self.u64()?;
        let kv_count = self.u64()?;
        // Each entry takes at least a few bytes: reject counts the file cannot hold.
        self.check_count(kv_count, 8 + 4 + 1, MAX_METADATA_ENTRIES, "metadata entries")?;
        self.check_count(tensor_count, 8 + 4 + 8 + 4 + 8, MAX_TENSORS, "tensors")?;

        let mut metadata = HashMap::with_capacity(reserve(kv_count));
        let mut keys = Vec::with_capacity(reserve(kv_count));
        for _ in 0..kv_count {
            let key = self.string()?;
            let ty = self.u32()?;
            let value = self.value(ty, 0).map_err(|e| format!("metadata `{key}`: {e}"))?;
            if metadata.contains_key(&key) {
                return Err(format!("metadata key `{key}` appears twice"));
            }
            keys.push(key.clone());
            metadata.insert(key, value);
        }

        let mut raw = Vec::with_capacity(reserve(tensor_count));
        for _ in 0..tensor_count {
            let name = self.string()?;
            let n_dims = self.u32()? as usize;
            if n_dims == 0 || n_dims > 4 {
                return Err(format!("tensor `{name}` has {n_dims} dimensions (supported: 1 to 4)"));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(self.u64()?);
            }
            let ty_id = self.u32()?;
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| unloadable_type(&name, ty_id))?;
            let offset = self.u64()?;
            raw.push((name, dims, ty, offset));
        }

        let alignment = match metadata.get("general.alignment").and_then(Value::as_u64) {
            Some(a) if a.is_power_of_two() => a,
            Some(a) => return Err(format!("invalid general.alignment {a} (must be a power of two)")),
            None => DEFAULT_ALIGNMENT,
        };
        let file_len = self.bytes.len() as u64;
        // pos <= file_len < 2^63 and alignment <= 2^63, so this cannot overflow.
        let data_start = (self.pos as u64).div_ceil(alignment) * alignment;

        let mut tensors = Vec::with_capacity(raw.len());
        let mut names = std::collections::HashSet::with_capacity(raw.len());
        for (name, dims, ty, offset) in raw {
            if !names.insert(name.clone()) {
                return Err(format!("tensor `{name}` appears twice"));
            }
            if dims.contains(&0) {
                return Err(format!("tensor `{name}` has a zero dimension: {dims:?}"));
            }
            let elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| format!("tensor `{name}` dimensions {dims:?} overflow"))?;
            let (block_elems, block_bytes) = ty.block_layout();
            if elements % block_elems as u64 != 0 {
                return Err(format!(
                    "tensor `{name}` has {elements} elements, not a multiple of the {ty} block size {block_elems}"
                ));
            }
            let size = (elements / block_elems as u64)
                .checked_mul(block_bytes as u64)
                .ok_or_else(|| format!("tensor `{name}` dimensions {dims:?} overflow"))?;
            if offset % alignment != 0 {
                return Err(format!(
                    "tensor `{name}` data offset {offset} is not a multiple of the alignment {alignment}"
                ));
            }
            let start = data_start.checked_add(offset).ok_or_else(|| format!("tensor `{name}` offset overflows"))?;
            let end = start.checked_add(size).ok_or_else(|| format!("tensor `{name}` size overflows"))?;
            if end > file_len {
                return Err(format!(
                    "tensor `{name}` lies past the end of the file (needs byte {end}, file has {file_len}); the file is truncated"
                ));
            }
            tensors.push(TensorInfo {
                name,
                dims: dims.into_iter().map(|d| d as usize).collect(),
                ty,
                offset: start as usize,
                size: size as usize,
            });
        }
        Ok((version, metadata, keys, tensors))
    }

    /// Rejects a count past `limit`, or one whose entries (at least `min_bytes_each` bytes
    /// each) cannot fit in what is left of the file.
    fn check_count(&self, count: u64, min_bytes_each: u64, limit: u64, what: &str) -> std::result::Result<(), String> {
        let remaining = (self.bytes.len() - self.pos) as u64;
        if count > limit {
            return Err(format!("header claims {count} {what}, more than the limit of {limit}; the file is corrupt"));
        }
        if count.saturating_mul(min_bytes_each) > remaining {
            return Err(format!(
                "header claims {count} {what}, more than the file can hold; the file is corrupt or truncated"
            ));
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            format!("unexpected end of file at byte {} (wanted {n} more bytes); the file is truncated", self.pos)
        })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let len = self.u64()?;
        // A length past the file is reported as truncation by `take`, before any allocation.
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let bytes = self.take(len)?;
        // Vocabularies occasionally hold invalid UTF-8 (raw byte tokens); keep them readable.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, ty: u32, depth: usize) -> std::result::Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err("arrays nested too deeply".into());
                }
                let item_ty = self.u32()?;
                let min_bytes = min_value_bytes(item_ty).ok_or_else(|| format!("unknown array item type {item_ty}"))?;
                let count = self.u64()?;
                self.check_count(count, min_bytes, MAX_ARRAY_ITEMS, "array items")?;
                self.array_items_left = self.array_items_left.checked_sub(count).ok_or_else(|| {
                    format!("metadata arrays hold more than {MAX_TOTAL_ARRAY_ITEMS} items in all; the file is corrupt")
                })?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(item_ty, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
}

/// Capacity to reserve for `count` entries that are still to be read.
fn reserve(count: u64) -> usize {
    usize::try_from(count).unwrap_or(usize::MAX).min(MAX_RESERVE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_tmp(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cortexstream-gguf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::File::create(&path).unwrap().write_all(bytes).unwrap();
        path
    }

    fn gguf_header(tensors: u64, kvs: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(tensors.to_le_bytes());
        b.extend(kvs.to_le_bytes());
        b
    }

    #[test]
    fn rejects_non_gguf() {
        let p = write_tmp("not.gguf", b"PK\x03\x04 this is a zip");
        let err = GgufFile::open(&p).unwrap_err().to_string();
        assert!(err.contains("not a GGUF file"), "{err}");
        assert!(err.contains("not.gguf"), "{err}");
    }

    #[test]
    fn rejects_missing_file() {
        let err = GgufFile::open("/nonexistent/model.gguf").unwrap_err();
        assert!(matches!(err, Error::ModelLoad { .. }), "{err}");
    }

    #[test]
    fn rejects_absurd_counts_without_allocating() {
        let p = write_tmp("huge.gguf", &gguf_header(u64::MAX / 2, u64::MAX / 2));
        let err = GgufFile::open(&p).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }

    #[test]
    fn reads_metadata_and_detects_truncated_tensor() {
        let mut b = gguf_header(1, 1);
        let key = b"general.architecture";
        b.extend((key.len() as u64).to_le_bytes());
        b.extend(key);
        b.extend(8u32.to_le_bytes());
        b.extend(5u64.to_le_bytes());
        b.extend(b"llama");
        let name = b"w";
        b.extend((name.len() as u64).to_le_bytes());
        b.extend(name);
        b.extend(1u32.to_le_bytes());
        b.extend(64u64.to_le_bytes());
        b.extend(0u32.to_le_bytes()); // F32
        b.extend(0u64.to_le_bytes());
        let p = write_tmp("trunc.gguf", &b);
        let err = GgufFile::open(&p).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");

        // Now pad to alignment and add the data: it parses.
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.extend(std::iter::repeat_n(0u8, 256));
        let p = write_tmp("ok.gguf", &b);
        let f = GgufFile::open(&p).unwrap();
        assert_eq!(f.require_str("general.architecture").unwrap(), "llama");
        let (info, bytes) = f.tensor_bytes("w").unwrap();
        assert_eq!(info.dims, vec![64]);
        assert_eq!(bytes.len(), 256);
    }
}
