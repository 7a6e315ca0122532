//! Host-side tensors: the dtype enum and `HostTensor`, the currency between loaders and backends.
//!
//! - Storage keeps the checkpoint's float dtype (F32 / F16 / BF16), so a BF16 model is not
//!   silently doubled in memory; quantized GGUF blocks arrive dequantized to F32.
//! - No autograd, no views: the model never needs them.

use crate::error::{Error, Result};
use half::{bf16, f16};

/// Element type of a dense tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size_of(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Name as safetensors and HF `torch_dtype` spell it.
    pub fn hf_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(DType::F32),
            "f16" | "float16" | "fp16" | "half" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            other => Err(Error::InvalidArgument(format!(
                "unknown dtype `{other}` (expected f32, f16 or bf16)"
            ))),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        })
    }
}

/// Owned element data of a host tensor.
#[derive(Clone, Debug)]
pub enum HostData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

/// A dense row-major tensor in host memory. `shape` lists the outermost dimension first
/// (PyTorch order): a linear weight is `[out_features, in_features]`.
#[derive(Clone, Debug)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: HostData,
}

impl HostTensor {
    pub fn from_f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        Self::check_len(&shape, data.len())?;
        Ok(HostTensor {
            shape,
            data: HostData::F32(data),
        })
    }

    fn check_len(shape: &[usize], len: usize) -> Result<()> {
        let n: usize = shape.iter().product();
        if n != len {
            return Err(Error::InvalidArgument(format!(
                "shape {shape:?} holds {n} elements but {len} were given"
            )));
        }
        Ok(())
    }

    pub fn dtype(&self) -> DType {
        match self.data {
            HostData::F32(_) => DType::F32,
            HostData::F16(_) => DType::F16,
            HostData::BF16(_) => DType::BF16,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Copy out as f32 (exact for every dtype).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            HostData::F32(v) => v.clone(),
            HostData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            HostData::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }

    /// Convert to `dtype`, rounding to nearest even when narrowing.
    pub fn to_dtype(&self, dtype: DType) -> HostTensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        let data = match dtype {
            DType::F32 => HostData::F32(self.to_f32_vec()),
            DType::F16 => HostData::F16(self.to_f32_vec().into_iter().map(f16::from_f32).collect()),
            DType::BF16 => {
                HostData::BF16(self.to_f32_vec().into_iter().map(bf16::from_f32).collect())
            }
        };
        HostTensor {
            shape: self.shape.clone(),
            data,
        }
    }

    /// Rows `start .. start + n` of a matrix, in its own dtype (an exact copy).
    pub fn rows(&self, start: usize, n: usize) -> Result<HostTensor> {
        let (cols, end) = match self.shape[..] {
            [total, cols] if start.checked_add(n).is_some_and(|e| e <= total) => (cols, start + n),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "rows {start}..{start}+{n} of a tensor of shape {:?}",
                    self.shape
                )))
            }
        };
        let r = start * cols..end * cols;
        let data = match &self.data {
            HostData::F32(v) => HostData::F32(v[r].to_vec()),
            HostData::F16(v) => HostData::F16(v[r].to_vec()),
            HostData::BF16(v) => HostData::BF16(v[r].to_vec()),
        };
        Ok(HostTensor {
            shape: vec![n, cols],
            data,
        })
    }

    /// Little-endian bytes of the elements, as safetensors stores them.
    pub fn as_le_bytes(&self) -> &[u8] {
        // x86_64 and aarch64 are little-endian; the crate refuses big-endian targets below.
        match &self.data {
            HostData::F32(v) => bytemuck::cast_slice(v),
            HostData::F16(v) => bytemuck::cast_slice(v),
            HostData::BF16(v) => bytemuck::cast_slice(v),
        }
    }

    /// Check that the tensor named `name` has `expected` shape.
    pub fn expect_shape(&self, name: &str, expected: &[usize]) -> Result<()> {
        if self.shape != expected {
            return Err(Error::ShapeMismatch {
                tensor: name.to_string(),
                expected: expected.to_vec(),
                actual: self.shape.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(target_endian = "big")]
compile_error!(
    "ferroq reads little-endian checkpoint bytes in place and needs a little-endian target"
);
