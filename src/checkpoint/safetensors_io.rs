//! Hugging Face safetensors: memory-mapped reading (single file or sharded index) and writing.
//!
//! - Format: an 8-byte little-endian header length, a JSON header `{name: {dtype, shape,
//!   data_offsets}}`, then the raw little-endian data (safetensors crate docs).

use crate::checkpoint::WeightSource;
use crate::error::{Error, Result};
use crate::tensor::{DType, HostData, HostTensor};
use safetensors::{Dtype as StDtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

struct Entry {
    shard: usize,
    dtype: StDtype,
    shape: Vec<usize>,
    /// absolute byte range in the shard
    start: usize,
    end: usize,
}

/// The tensors of a (possibly sharded) safetensors checkpoint.
pub struct SafetensorsWeights {
    maps: Vec<(PathBuf, memmap2::Mmap)>,
    entries: BTreeMap<String, Entry>,
    /// every shard's `__metadata__`, merged
    metadata: HashMap<String, String>,
}

impl SafetensorsWeights {
    /// Open `dir/model.safetensors`, or the shards named by `dir/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            let text =
                crate::checkpoint::read_text(&index, crate::checkpoint::MAX_CONFIG_BYTES, "index")?;
            let j: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::Safetensors(format!("{}: {e}", index.display())))?;
            let map = j
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    Error::Safetensors(format!("{} has no `weight_map` object", index.display()))
                })?;
            let mut shards: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            shards.sort();
            shards.dedup();
            shards.iter().map(|s| dir.join(s)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        Self::open_files(&files)
    }

    pub fn open_files(files: &[PathBuf]) -> Result<Self> {
        let mut maps = Vec::new();
        let mut entries = BTreeMap::new();
        let mut metadata = HashMap::new();
        for (shard, path) in files.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: read-only map of a checkpoint that ferroq never writes while reading;
            // as with every mmap loader, we assume no other process truncates it meanwhile.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let (header_len, meta) = SafeTensors::read_metadata(&map[..])
                .map_err(|e| Error::Safetensors(format!("{}: {e}", path.display())))?;
            let data_start = 8 + header_len;
            if let Some(m) = meta.metadata() {
                metadata.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                entries.insert(
                    name.clone(),
                    Entry {
                        shard,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        start: data_start + s,
                        end: data_start + e,
                    },
                );
            }
            maps.push((path.clone(), map));
        }
        Ok(SafetensorsWeights {
            maps,
            entries,
            metadata,
        })
    }

    /// A value of the files' `__metadata__`.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// The raw safetensors dtype of a tensor, if present.
    pub fn dtype_of(&self, name: &str) -> Option<StDtype> {
        self.entries.get(name).map(|e| e.dtype)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// A tensor's dtype, shape and little-endian bytes, for the non-float dtypes
    /// (int8 / fp8 / int32) that quantized checkpoints carry.
    pub fn raw(&self, name: &str) -> Result<(StDtype, Vec<usize>, &[u8])> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let (path, map) = &self.maps[e.shard];
        let bytes = map.get(e.start..e.end).ok_or_else(|| {
            Error::Safetensors(format!(
                "{}: tensor `{name}` runs past the end of the file",
                path.display()
            ))
        })?;
        Ok((e.dtype, e.shape.clone(), bytes))
    }
}

impl SafetensorsWeights {
    /// Drop the file pages of a tensor that has been copied out from this process's resident
    /// set, so loading a model holds its packed copy, not that plus the mapped file (the page
    /// cache keeps them; a later read faults them back in).
    pub(crate) fn release(&self, name: &str) {
        #[cfg(unix)]
        if let Some(e) = self.entries.get(name) {
            if let Some((_, map)) = self.maps.get(e.shard) {
                // SAFETY: the map is a read-only private file mapping that nothing writes, so
                // MADV_DONTNEED only drops resident pages; any slice into it stays valid and
                // reads the file's bytes again on the next access. A failure changes nothing.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        e.start,
                        e.end.saturating_sub(e.start),
                    )
                };
            }
        }
    }
}

impl WeightSource for SafetensorsWeights {
    fn tensor_names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    fn load(&self, name: &str) -> Result<HostTensor> {
        let (dtype, shape, bytes) = self.raw(name)?;
        let numel: usize = shape.iter().product();
        let (data, elem) = match dtype {
            StDtype::F32 => (HostData::F32(bytemuck::pod_collect_to_vec(bytes)), 4),
            StDtype::F16 => (HostData::F16(bytemuck::pod_collect_to_vec(bytes)), 2),
            StDtype::BF16 => (HostData::BF16(bytemuck::pod_collect_to_vec(bytes)), 2),
            other => {
                return Err(Error::UnsupportedDType {
                    tensor: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        if bytes.len() != numel * elem {
            return Err(Error::Safetensors(format!(
                "tensor `{name}`: {} bytes cannot hold shape {shape:?}",
                bytes.len()
            )));
        }
        self.release(name);
        Ok(HostTensor { shape, data })
    }
}

fn st_dtype(d: DType) -> StDtype {
    match d {
        DType::F32 => StDtype::F32,
        DType::F16 => StDtype::F16,
        DType::BF16 => StDtype::BF16,
    }
}

/// A tensor of any safetensors dtype, as bytes.
pub struct RawTensor<'a> {
    pub dtype: StDtype,
    pub shape: Vec<usize>,
    pub bytes: &'a [u8],
}

/// Write `tensors` to a single safetensors file, atomically (temp file, then rename), so an
/// interrupted write never leaves a half checkpoint under the final name.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, HostTensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let raw: Vec<(String, RawTensor)> = tensors
        .iter()
        .map(|(n, t)| {
            let r = RawTensor {
                dtype: st_dtype(t.dtype()),
                shape: t.shape.clone(),
                bytes: t.as_le_bytes(),
            };
            (n.clone(), r)
        })
        .collect();
    write_raw_safetensors(path, &raw, metadata)
}

/// `write_safetensors` for tensors of any dtype.
pub fn write_raw_safetensors(
    path: &Path,
    tensors: &[(String, RawTensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(name, t)| {
            safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), t.bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Safetensors(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let tmp = path.with_extension("safetensors.partial");
    safetensors::serialize_to_file(views, &metadata, &tmp)
        .map_err(|e| Error::Safetensors(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
