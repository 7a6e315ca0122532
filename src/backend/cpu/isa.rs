//! Which kernel family each op of the CPU backend runs (`CpuIsa`).
//!
//! - The best the CPU has is the default (`CpuIsa::detect`).
//! - Tests and benchmarks force the slower families (`CpuIsa::all_available`), so every path is
//!   checked against the reference through the backend, not only kernel by kernel.

use super::{act_quant, dense, int4, int8, vmath};

/// Which int8 GEMM family runs W8A8 linears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Isa {
    /// AMX tiles (`int8::amx`) from 16 rows, VNNI below (bit-identical); same packed weights.
    Amx,
    /// AVX-512 VNNI on weights repacked at load (`int8::vnni`).
    Avx512Vnni,
    /// AVX2 `vpmaddwd` on row-major weights (`int8`).
    Avx2,
    /// Plain Rust.
    Portable,
}

impl Int8Isa {
    /// The best family this CPU supports.
    pub fn detect() -> Int8Isa {
        if int8::amx::available() {
            Int8Isa::Amx
        } else if int8::vnni::available() {
            Int8Isa::Avx512Vnni
        } else if dense::has_avx2() {
            Int8Isa::Avx2
        } else {
            Int8Isa::Portable
        }
    }

    /// Every family this CPU can run, best last (tests run them all).
    pub fn all_available() -> Vec<Int8Isa> {
        let mut v = vec![Int8Isa::Portable];
        if dense::has_avx2() {
            v.push(Int8Isa::Avx2);
        }
        if int8::vnni::available() {
            v.push(Int8Isa::Avx512Vnni);
        }
        if int8::amx::available() {
            v.push(Int8Isa::Amx);
        }
        v
    }

    pub(super) fn gemm_isa(self) -> dense::Isa {
        match self {
            Int8Isa::Portable => dense::Isa::Portable,
            Int8Isa::Avx2 | Int8Isa::Avx512Vnni | Int8Isa::Amx => dense::Isa::Avx2,
        }
    }
}

/// Which dense kernels run dense linears (and, as tiles, attention and decoded weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseIsa {
    /// The AVX-512 panels, with BF16 weights' prefill on the AMX tiles (`dense::amx`).
    Amx,
    /// AVX-512 on weights repacked at load into panels (`dense::panels`).
    Avx512Panels,
    /// AVX2 + FMA + F16C tiles on row-major weights.
    Avx2,
    /// Plain Rust.
    Portable,
}

impl DenseIsa {
    /// Every variant this CPU can run, best first.
    pub(super) fn available() -> Vec<DenseIsa> {
        let mut v = Vec::new();
        if dense::amx::available() {
            v.push(DenseIsa::Amx);
        }
        if dense::panels::available() {
            v.push(DenseIsa::Avx512Panels);
        }
        if dense::has_avx2() {
            v.push(DenseIsa::Avx2);
        }
        v.push(DenseIsa::Portable);
        v
    }

    /// Whether weights are repacked into `dense::panels` at load.
    pub fn panels(self) -> bool {
        matches!(self, DenseIsa::Amx | DenseIsa::Avx512Panels)
    }

    /// The tile family for row-major operands (attention, decoded weights, unpacked matrices).
    pub fn tiles(self) -> dense::Isa {
        match self {
            DenseIsa::Portable => dense::Isa::Portable,
            DenseIsa::Amx | DenseIsa::Avx512Panels | DenseIsa::Avx2 => dense::Isa::Avx2,
        }
    }
}

/// Which kernel runs W4A16 linears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int4Isa {
    /// AMX BF16 tiles for prefill (`int4::amx`), `vdpbf16ps` for decode; same packing.
    Amx,
    /// `vdpbf16ps` on BF16 activations (`int4::bf16`).
    Avx512Bf16,
    /// Nibbles decoded in AVX-512 registers against f32 activations (`int4`).
    Avx512,
    /// Rows decoded by `QuantWeight::decode_rows` into the dense tiles.
    Decoded,
}

impl Int4Isa {
    pub(super) fn available() -> Vec<Int4Isa> {
        let mut v = Vec::new();
        if int4::amx::available() {
            v.push(Int4Isa::Amx);
        }
        if int4::bf16::available() {
            v.push(Int4Isa::Avx512Bf16);
        }
        if int4::has_avx512() {
            v.push(Int4Isa::Avx512);
        }
        v.push(Int4Isa::Decoded);
        v
    }
}

/// The kernel family each op of the CPU backend runs: the best the CPU has by default; tests
/// force the slower ones to check every path against the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuIsa {
    pub dense: DenseIsa,
    pub int8: Int8Isa,
    pub int4: Int4Isa,
    /// AVX-512 `exp` / SiLU (`vmath`) and the AVX-512 activation quantizer (`act_quant`).
    pub vector: bool,
}

impl CpuIsa {
    /// The best of each family on this CPU.
    pub fn detect() -> CpuIsa {
        CpuIsa::all_available()[0]
    }

    /// Configurations that together run every available variant of every family: the i-th
    /// takes each family's i-th best variant (or its last), so the first is the best and the
    /// last the portable one.
    pub fn all_available() -> Vec<CpuIsa> {
        let (d, i8s, i4) = (
            DenseIsa::available(),
            Int8Isa::all_available(),
            Int4Isa::available(),
        );
        let mut i8s = i8s;
        i8s.reverse(); // best first
        let vec = if act_quant::available() && vmath::avx512() {
            vec![true, false]
        } else {
            vec![false]
        };
        let n = d.len().max(i8s.len()).max(i4.len()).max(vec.len());
        let pick = |i: usize, n: usize| i.min(n - 1);
        (0..n)
            .map(|i| CpuIsa {
                dense: d[pick(i, d.len())],
                int8: i8s[pick(i, i8s.len())],
                int4: i4[pick(i, i4.len())],
                vector: vec[pick(i, vec.len())],
            })
            .collect()
    }
}
