//! A GGUF (version 3) writer: the counterpart of [`crate::gguf`] for tools that make model
//! files (the requantizer). Tensors are laid out as ggml does it: each at the next multiple of
//! the alignment (`general.alignment`, default 32) from the start of the data section.

use std::io::Write;
use std::path::Path;

use crate::gguf::{GgmlType, Value};

const DEFAULT_ALIGNMENT: usize = 32;

/// One tensor to write; `data` must hold exactly its elements in type `ty`.
pub struct TensorToWrite<'a> {
    pub name: &'a str,
    /// ggml order: `dims[0]` is the contiguous one.
    pub dims: &'a [usize],
    pub ty: GgmlType,
    pub data: &'a [u8],
}

/// The file's bytes.
pub fn to_bytes(metadata: &[(String, Value)], tensors: &[TensorToWrite]) -> Vec<u8> {
    let alignment = metadata
        .iter()
        .find(|(key, _)| key == "general.alignment")
        .and_then(|(_, v)| v.as_u64())
        .map_or(DEFAULT_ALIGNMENT, |a| a as usize);
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        push_string(&mut out, key);
        out.extend_from_slice(&value_type_id(value).to_le_bytes());
        push_value(&mut out, value);
    }
    let mut offset = 0usize;
    for t in tensors {
        push_string(&mut out, t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for &d in t.dims {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        out.extend_from_slice(&t.ty.id().to_le_bytes());
        out.extend_from_slice(&(offset as u64).to_le_bytes());
        offset = (offset + t.data.len()).next_multiple_of(alignment);
    }
    for t in tensors {
        out.resize(out.len().next_multiple_of(alignment), 0);
        out.extend_from_slice(t.data);
    }
    out.resize(out.len().next_multiple_of(alignment), 0);
    out
}

/// Writes the file at `path` through a temporary file in the same directory renamed into place,
/// so a concurrent reader sees either no file or the whole file.
pub fn write_file(path: &Path, metadata: &[(String, Value)], tensors: &[TensorToWrite]) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&to_bytes(metadata, tensors))?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Appends a GGUF string: its byte length as a u64, then its bytes.
pub fn push_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// GGUF's metadata value type ids. An empty array is written as an array of u8 (the reader
/// keeps no element type for it).
pub fn value_type_id(value: &Value) -> u32 {
    match value {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

/// Appends a metadata value's payload (its type id is written separately, before it).
pub fn push_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.push(*v as u8),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => push_string(out, s),
        Value::Array(items) => {
            out.extend_from_slice(&items.first().map_or(0, value_type_id).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                push_value(out, item);
            }
        }
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;

    #[test]
    fn what_it_writes_reads_back() {
        let metadata = vec![
            ("general.architecture".to_string(), Value::String("llama".into())),
            ("a.list".to_string(), Value::Array(vec![Value::I32(-1), Value::I32(2)])),
            ("a.flag".to_string(), Value::Bool(true)),
        ];
        let norm: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let block = [7u8; 34];
        let tensors = [
            TensorToWrite { name: "norm", dims: &[3], ty: GgmlType::F32, data: &norm },
            TensorToWrite { name: "w", dims: &[32, 1], ty: GgmlType::Q8_0, data: &block },
        ];
        let file = GgufFile::from_bytes("written", to_bytes(&metadata, &tensors)).expect("it parses");
        for (key, value) in &metadata {
            assert_eq!(file.get(key), Some(value), "{key}");
        }
        let keys: Vec<_> = metadata.iter().map(|(key, _)| key.clone()).collect();
        assert_eq!(file.metadata_keys(), keys, "the reader keeps the file's key order");
        assert_eq!(file.tensor_bytes("norm").unwrap().1, &norm[..]);
        let (info, bytes) = file.tensor_bytes("w").unwrap();
        assert_eq!((info.ty, &info.dims[..], bytes), (GgmlType::Q8_0, &[32usize, 1][..], &block[..]));
        assert_eq!(info.offset % DEFAULT_ALIGNMENT, 0, "tensor data is aligned");
    }
}
