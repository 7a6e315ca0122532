//! Checkpoint readers: every format seen as tensors under Hugging Face names (`WeightSource`).
//!
//! - GGUF (`gguf/`), safetensors (`safetensors_io`, single file or sharded), compressed-tensors
//!   (`ct`), the architectures (`arch/`, one file each), the config (`config`, `hf_config`), the
//!   decoder's linear input sites (`site`), format detection.
//! - Building a model from a source is `model`'s job; this layer only reads and checks.

pub mod arch;
pub mod config;
pub mod ct;
pub mod fused;
pub mod gguf;
pub mod hf_config;
pub mod rope;
pub mod safetensors_io;
pub mod site;

use crate::error::{Error, Result};
use crate::quant::{ActSpec, QuantWeight};
use crate::tensor::HostTensor;
use config::ModelConfig;
use site::OnlineHadamard;
use std::path::Path;

/// A checkpoint seen as tensors with Hugging Face names.
pub trait WeightSource {
    fn tensor_names(&self) -> Vec<String>;
    fn load(&self, name: &str) -> Result<HostTensor>;
    /// The quantized weight and activation policy of linear `name` (HF module name, e.g.
    /// `model.layers.0.self_attn.q_proj`), or None when it is dense.
    fn quant_linear(&self, _name: &str) -> Result<Option<(QuantWeight, ActSpec)>> {
        Ok(None)
    }
    /// The online rotation these weights were made for, when the source knows it (quantized
    /// models); loading checks it against the config so rotated weights never run unrotated.
    fn online_hadamard(&self) -> Option<OnlineHadamard> {
        None
    }
}

/// A borrowed source is a source (so a wrapper can hold either).
impl<T: WeightSource + ?Sized> WeightSource for &T {
    fn tensor_names(&self) -> Vec<String> {
        (**self).tensor_names()
    }
    fn load(&self, name: &str) -> Result<HostTensor> {
        (**self).load(name)
    }
    fn quant_linear(&self, name: &str) -> Result<Option<(QuantWeight, ActSpec)>> {
        (**self).quant_linear(name)
    }
    fn online_hadamard(&self) -> Option<OnlineHadamard> {
        (**self).online_hadamard()
    }
}

/// A map of host tensors (HF names) is a weight source too.
impl WeightSource for std::collections::BTreeMap<String, HostTensor> {
    fn tensor_names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
    fn load(&self, name: &str) -> Result<HostTensor> {
        self.get(name)
            .cloned()
            .ok_or_else(|| Error::MissingTensor(name.to_string()))
    }
}

/// The checkpoint formats ferroq reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Gguf,
    HfDir,
}

impl Format {
    pub fn detect(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Ok(Format::HfDir)
        } else if path.is_file() {
            Ok(Format::Gguf)
        } else {
            Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ))
        }
    }
}

/// Read config.json (plus generation_config.json eos ids, which HF uses to stop generation).
pub fn read_hf_config(dir: &Path) -> Result<ModelConfig> {
    let p = dir.join("config.json");
    let text = read_text(&p, MAX_CONFIG_BYTES, "config")?;
    let mut config = ModelConfig::from_hf_json(&text)?;
    if let Ok(gen) = read_text(
        &dir.join("generation_config.json"),
        MAX_CONFIG_BYTES,
        "config",
    ) {
        if let Ok(j) = serde_json::from_str::<serde_json::Value>(&gen) {
            let ids: Vec<u32> = match j.get("eos_token_id") {
                Some(serde_json::Value::Number(n)) => {
                    n.as_u64().into_iter().map(|v| v as u32).collect()
                }
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_u64())
                    .map(|v| v as u32)
                    .collect(),
                _ => Vec::new(),
            };
            for id in ids {
                if !config.eos_token_ids.contains(&id) {
                    config.eos_token_ids.push(id);
                }
            }
        }
    }
    Ok(config)
}

/// The `quantization_config.format` of a compressed-tensors checkpoint, if the directory is one.
pub fn compressed_config(dir: &Path) -> Result<Option<String>> {
    let p = dir.join("config.json");
    let text = read_text(&p, MAX_CONFIG_BYTES, "config")?;
    let j: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Config(format!("config.json: {e}")))?;
    Ok(j.get("quantization_config").map(|q| {
        q.get("format")
            .and_then(|f| f.as_str())
            .unwrap_or("unknown format")
            .to_string()
    }))
}

/// Bytes a text input may take: JSON configs and recipes are small, tokenizers and calibration
/// text larger; nothing legitimate comes near these, while `/dev/zero` would read forever.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
pub const MAX_TOKENIZER_BYTES: u64 = 256 << 20;
pub const MAX_RECIPE_BYTES: u64 = 1 << 20;
pub const MAX_CALIB_BYTES: u64 = 256 << 20;

/// A text file of at most `limit` bytes, read without taking more than that from it (a
/// device or a pipe that never ends is refused at the limit).
pub fn read_text(path: &Path, limit: u64, what: &str) -> Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::InvalidArgument(format!(
            "{what} {} is larger than {limit} bytes",
            path.display()
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| Error::InvalidArgument(format!("{what} {} is not UTF-8 text", path.display())))
}

/// Refuse an output directory that exists and is not empty: commands call this before their
/// work, so a user learns it at once, not after minutes of calibration.
pub fn check_output_dir(out: &Path) -> Result<()> {
    if out.exists() {
        let mut entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
        if entries.next().is_some() {
            return Err(Error::InvalidArgument(format!(
                "output directory {} exists and is not empty",
                out.display()
            )));
        }
    }
    Ok(())
}

/// The lock a writer of `out` holds (`.NAME.lock` beside it), released when dropped.
struct OutputLock(std::path::PathBuf);

impl Drop for OutputLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Create the model directory `out` atomically: `fill` writes into a temporary sibling
/// directory of its own (named for this process and moment, so nothing else's is touched),
/// which is renamed to `out` only if it succeeds and removed if it fails. An existing
/// non-empty `out` is refused, and so is a second writer of the same `out` while one runs
/// (`.NAME.lock`, created exclusively).
pub fn write_dir_atomically<T>(out: &Path, fill: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    check_output_dir(out)?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let lock_path = parent.join(format!(".{name}.lock"));
    let _lock = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&lock_path)
    {
        Ok(_) => OutputLock(lock_path),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::InvalidArgument(format!(
                "another process is writing {} (lock {}); remove the lock if none is",
                out.display(),
                lock_path.display()
            )))
        }
        Err(e) => return Err(Error::io(&lock_path, e)),
    };
    // checked again under the lock: a writer that finished meanwhile filled it
    check_output_dir(out)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tmp = parent.join(format!(".{name}.partial-{}-{stamp}", std::process::id()));
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    match fill(&tmp) {
        Ok(v) => {
            if out.exists() {
                std::fs::remove_dir(out).map_err(|e| Error::io(out, e))?;
            }
            std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
            Ok(v)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Pretty JSON with a trailing newline.
pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Json(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

/// Bytes of a model file, or of the safetensors files of a model directory.
pub fn disk_size(p: &Path) -> Result<u64> {
    if p.is_file() {
        return std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(|e| Error::io(p, e));
    }
    let mut total = 0;
    for e in std::fs::read_dir(p).map_err(|e| Error::io(p, e))? {
        let path = e.map_err(|e| Error::io(p, e))?.path();
        if path.extension().is_some_and(|x| x == "safetensors") {
            total += std::fs::metadata(&path)
                .map_err(|e| Error::io(&path, e))?
                .len();
        }
    }
    Ok(total)
}
