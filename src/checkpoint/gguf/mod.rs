//! GGUF v2 / v3 reader (llama.cpp's container; `gguf.md` in the ggml repository).
//!
//! - Header, typed metadata, tensor infos and the aligned data section, from a memory map.
//! - Every offset is bounds-checked at open, so a truncated download fails naming the first
//!   tensor it cuts instead of crashing later.
//! - Tensors dequantize to f32 on request (`dequant.rs`); `weights.rs` gives them HF names.

pub mod dequant;
mod hparams;
pub mod weights;

use crate::error::{Error, Result};
use dequant::GgmlType;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Arrays of arrays nest at most this deep: a deeper file is hostile, and parsing it would
/// recurse off the stack.
const MAX_ARRAY_DEPTH: usize = 8;

/// A typed metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// Any integer type that fits in u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Where one tensor lives in the file. `dims` are in GGML order (fastest-varying first), so a
/// `[out, in]` PyTorch matrix has `dims == [in, out]`.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte offset of the tensor's data in the file.
    pub start: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Shape in PyTorch order (outermost first).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// An open GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    meta_index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    map: memmap2::Mmap,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Error::GgufTruncated {
                what: what(),
                start: self.pos as u64,
                end: (self.pos as u64).saturating_add(n as u64),
                file_len: self.buf.len() as u64,
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(what)?;
        let len = usize::try_from(len)
            .map_err(|_| Error::GgufInvalid(format!("{}: length {len} too large", what())))?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::GgufInvalid(format!("{} is not valid UTF-8", what())))
    }

    fn value(&mut self, ty: u32, what: &dyn Fn() -> String, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(self.array::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => Value::Bool(self.array::<1>(what)?[0] != 0),
            8 => Value::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::GgufInvalid(format!(
                        "{} nests arrays more than {MAX_ARRAY_DEPTH} deep",
                        what()
                    )));
                }
                let elem_ty = self.u32(what)?;
                let n = self.u64(what)?;
                // Each element takes at least one byte: a count beyond the file is corrupt.
                if n > (self.buf.len() - self.pos) as u64 {
                    return Err(Error::GgufTruncated {
                        what: what(),
                        start: self.pos as u64,
                        end: (self.pos as u64).saturating_add(n),
                        file_len: self.buf.len() as u64,
                    });
                }
                // a `Value` is many times the byte an element may take: grow as elements parse
                let mut v = Vec::with_capacity((n as usize).min(4096));
                for _ in 0..n {
                    v.push(self.value(elem_ty, what, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(Error::GgufUnknownValueType(other)),
        })
    }
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the map is read-only and ferroq never writes the file; like every
        // mmap-based loader we assume no other process truncates it while it is open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let p = parse(&map)?;
        Ok(GgufFile {
            path,
            version: p.version,
            metadata: p.metadata,
            meta_index: p.meta_index,
            tensors: p.tensors,
            tensor_index: p.tensor_index,
            map,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn require(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| Error::GgufMissingKey(key.to_string()))
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.require(key)?.as_u64().ok_or(Error::GgufBadValue {
            key: key.to_string(),
            expected: "an unsigned integer",
        })
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.require(key)?.as_f64().ok_or(Error::GgufBadValue {
            key: key.to_string(),
            expected: "a number",
        })
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.require(key)?.as_str().ok_or(Error::GgufBadValue {
            key: key.to_string(),
            expected: "a string",
        })
    }

    /// A string array such as `tokenizer.ggml.tokens`.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        let bad = || Error::GgufBadValue {
            key: key.to_string(),
            expected: "an array of strings",
        };
        match self.require(key)? {
            Value::Array(v) => v.iter().map(|x| x.as_str().ok_or_else(bad)).collect(),
            _ => Err(bad()),
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Raw bytes of a tensor (bounds were checked at open).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.map[t.start as usize..(t.start + t.n_bytes) as usize]
    }

    /// Dequantize a tensor to f32, in GGML element order.
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let mut out = vec![0f32; t.numel() as usize];
        dequant::dequantize(t.ty, self.tensor_bytes(t), &mut out)?;
        Ok(out)
    }
}

struct Parsed {
    version: u32,
    metadata: Vec<(String, Value)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

fn parse(buf: &[u8]) -> Result<Parsed> {
    let mut c = Cursor { buf, pos: 0 };
    let hdr = || "the GGUF header".to_string();
    let magic: [u8; 4] = c.array(&hdr)?;
    if &magic != MAGIC {
        return Err(Error::GgufBadMagic { found: magic });
    }
    let version = c.u32(&hdr)?;
    if !(2..=3).contains(&version) {
        return Err(Error::GgufUnsupportedVersion(version));
    }
    let n_tensors = c.u64(&hdr)?;
    let n_kv = c.u64(&hdr)?;

    let mut metadata = Vec::new();
    let mut meta_index = HashMap::new();
    for i in 0..n_kv {
        let key = c.string(&|| format!("metadata key #{i}"))?;
        let what = || format!("metadata value `{key}`");
        let ty = c.u32(&what)?;
        let v = c.value(ty, &what, 0)?;
        meta_index.insert(key.clone(), metadata.len());
        metadata.push((key, v));
    }

    let alignment = match meta_index.get("general.alignment") {
        Some(&i) => metadata[i]
            .1
            .as_u64()
            .filter(|a| *a > 0 && a.is_power_of_two())
            .ok_or(Error::GgufBadValue {
                key: "general.alignment".into(),
                expected: "a power-of-two integer",
            })?,
        None => DEFAULT_ALIGNMENT,
    };

    let mut raw = Vec::new();
    for i in 0..n_tensors {
        let name = c.string(&|| format!("tensor info #{i}"))?;
        let what = || format!("tensor info `{name}`");
        let n_dims = c.u32(&what)?;
        if n_dims > 8 {
            return Err(Error::GgufInvalid(format!(
                "tensor `{name}` has {n_dims} dimensions"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&what)?);
        }
        let type_id = c.u32(&what)?;
        let offset = c.u64(&what)?;
        raw.push((name, dims, type_id, offset));
    }
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;

    let mut tensors = Vec::with_capacity(raw.len());
    let mut tensor_index = HashMap::new();
    for (name, dims, type_id, offset) in raw {
        let ty = GgmlType::from_id(type_id).ok_or_else(|| Error::GgufUnknownTensorType {
            tensor: name.clone(),
            type_id,
        })?;
        let numel = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| {
                Error::GgufInvalid(format!("tensor `{name}` dims {dims:?} overflow 64 bits"))
            })?;
        let n_bytes = ty.byte_size(numel).ok_or_else(|| {
            Error::GgufInvalid(format!(
                "tensor `{name}` dims {dims:?} are not a whole number of {} blocks, or their \
                 byte size overflows 64 bits",
                ty.name()
            ))
        })?;
        if offset % alignment != 0 {
            return Err(Error::GgufInvalid(format!(
                "tensor `{name}` data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        let range = data_start
            .checked_add(offset)
            .and_then(|start| Some((start, start.checked_add(n_bytes)?)));
        let start = match range {
            Some((start, end)) if end <= buf.len() as u64 => start,
            _ => {
                return Err(Error::GgufTruncated {
                    what: format!("tensor `{name}` data (offset {offset}, {n_bytes} bytes)"),
                    start: data_start.saturating_add(offset),
                    end: data_start.saturating_add(offset).saturating_add(n_bytes),
                    file_len: buf.len() as u64,
                })
            }
        };
        tensor_index.insert(name.clone(), tensors.len());
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            start,
            n_bytes,
        });
    }

    // every tensor's bytes are its own: two ranges that overlap would alias one another's data
    let mut by_start: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    by_start.sort_by_key(|t| t.start);
    for w in by_start.windows(2) {
        if let [a, b] = w {
            if b.start < a.start + a.n_bytes {
                return Err(Error::GgufInvalid(format!(
                    "tensors `{}` and `{}` share data bytes",
                    a.name, b.name
                )));
            }
        }
    }

    Ok(Parsed {
        version,
        metadata,
        meta_index,
        tensors,
        tensor_index,
    })
}
