//! The typed kernel table: every CUDA kernel ferroq launches is a `Kernel` variant that knows
//! its module (one `kernels/*.cu` file) and its `extern "C"` symbol, so call sites never name
//! kernels as loose strings and the compile test can check the table against what ptxas saw.
//! A module's source is `kernels/common.cuh` followed by its file (no CUDA headers).

/// One `kernels/*.cu` file, compiled as one CUBIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Module {
    Norm,
    Rope,
    Embed,
    Activation,
    Kv,
    Attention,
    Gemm,
    Sampling,
    GemmInt8,
    Quant,
    Hadamard,
    GemmFp8,
    GemmInt4,
    Conv,
}

const COMMON: &str = include_str!("../../../kernels/common.cuh");

impl Module {
    pub const ALL: [Module; 14] = [
        Module::Norm,
        Module::Rope,
        Module::Embed,
        Module::Activation,
        Module::Kv,
        Module::Attention,
        Module::Gemm,
        Module::Sampling,
        Module::GemmInt8,
        Module::Quant,
        Module::Hadamard,
        Module::GemmFp8,
        Module::GemmInt4,
        Module::Conv,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Module::Norm => "norm",
            Module::Rope => "rope",
            Module::Embed => "embed",
            Module::Activation => "activation",
            Module::Kv => "kv",
            Module::Attention => "attention",
            Module::Gemm => "gemm",
            Module::Sampling => "sampling",
            Module::GemmInt8 => "gemm_int8",
            Module::Quant => "quant",
            Module::Hadamard => "hadamard",
            Module::GemmFp8 => "gemm_fp8",
            Module::GemmInt4 => "gemm_int4",
            Module::Conv => "conv",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Module::Norm => include_str!("../../../kernels/norm.cu"),
            Module::Rope => include_str!("../../../kernels/rope.cu"),
            Module::Embed => include_str!("../../../kernels/embed.cu"),
            Module::Activation => include_str!("../../../kernels/activation.cu"),
            Module::Kv => include_str!("../../../kernels/kv.cu"),
            Module::Attention => include_str!("../../../kernels/attention.cu"),
            Module::Gemm => include_str!("../../../kernels/gemm.cu"),
            Module::Sampling => include_str!("../../../kernels/sampling.cu"),
            Module::GemmInt8 => include_str!("../../../kernels/gemm_int8.cu"),
            Module::Quant => include_str!("../../../kernels/quant.cu"),
            Module::Hadamard => include_str!("../../../kernels/hadamard.cu"),
            Module::GemmFp8 => include_str!("../../../kernels/gemm_fp8.cu"),
            Module::GemmInt4 => include_str!("../../../kernels/gemm_int4.cu"),
            Module::Conv => include_str!("../../../kernels/conv.cu"),
        }
    }

    /// What NVRTC compiles: the common header, then the module (a `#line` keeps error line
    /// numbers pointing into the module's own file).
    pub fn source(self) -> String {
        format!("{COMMON}\n#line 1 \"{}.cu\"\n{}", self.name(), self.body())
    }

    pub fn kernels(self) -> impl Iterator<Item = Kernel> {
        Kernel::ALL.into_iter().filter(move |k| k.module() == self)
    }
}

/// Every kernel, by module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    RmsNorm,
    AddRmsNorm,
    Rope,
    EmbedBf16,
    SiluMul,
    AddAssign,
    AddBias,
    WriteKv,
    AttnPartial,
    AttnCombine,
    GemmBf16,
    GemvBf16,
    ArgmaxRows,
    GemmW8a8,
    GemvW8a8,
    RmsNormQuantI8,
    SiluMulQuantI8,
    QuantRowsI8,
    FwhtBlocks,
    GemmFp8,
    QuantRowsFp8,
    GemvW4a16,
    GemmW4a16,
    ConvInt8,
    ConvBf16,
    ChannelAffine,
    ReluInplace,
    GemvFp8,
    RmsNormQuantFp8,
    SiluMulQuantFp8,
    CastBf16,
    GemmBf16Tc,
    AttnPrefillHd64,
    AttnPrefillHd128,
    Penalize,
    SampleRows,
    RotateQuantI8,
    RotateQuantFp8,
    RopeWriteKv,
    GemmW4a16Tc,
    GemmW8a8Wg,
    GemmFp8Wg,
}

impl Kernel {
    pub const ALL: [Kernel; 42] = [
        Kernel::RmsNorm,
        Kernel::AddRmsNorm,
        Kernel::Rope,
        Kernel::EmbedBf16,
        Kernel::SiluMul,
        Kernel::AddAssign,
        Kernel::AddBias,
        Kernel::WriteKv,
        Kernel::AttnPartial,
        Kernel::AttnCombine,
        Kernel::GemmBf16,
        Kernel::GemvBf16,
        Kernel::ArgmaxRows,
        Kernel::GemmW8a8,
        Kernel::GemvW8a8,
        Kernel::RmsNormQuantI8,
        Kernel::SiluMulQuantI8,
        Kernel::QuantRowsI8,
        Kernel::FwhtBlocks,
        Kernel::GemmFp8,
        Kernel::QuantRowsFp8,
        Kernel::GemvW4a16,
        Kernel::GemmW4a16,
        Kernel::ConvInt8,
        Kernel::ConvBf16,
        Kernel::ChannelAffine,
        Kernel::ReluInplace,
        Kernel::GemvFp8,
        Kernel::RmsNormQuantFp8,
        Kernel::SiluMulQuantFp8,
        Kernel::CastBf16,
        Kernel::GemmBf16Tc,
        Kernel::AttnPrefillHd64,
        Kernel::AttnPrefillHd128,
        Kernel::Penalize,
        Kernel::SampleRows,
        Kernel::RotateQuantI8,
        Kernel::RotateQuantFp8,
        Kernel::RopeWriteKv,
        Kernel::GemmW4a16Tc,
        Kernel::GemmW8a8Wg,
        Kernel::GemmFp8Wg,
    ];

    pub fn module(self) -> Module {
        match self {
            Kernel::RmsNorm | Kernel::AddRmsNorm => Module::Norm,
            Kernel::Rope | Kernel::RopeWriteKv => Module::Rope,
            Kernel::EmbedBf16 => Module::Embed,
            Kernel::SiluMul | Kernel::AddAssign | Kernel::AddBias => Module::Activation,
            Kernel::WriteKv => Module::Kv,
            Kernel::AttnPartial
            | Kernel::AttnCombine
            | Kernel::AttnPrefillHd64
            | Kernel::AttnPrefillHd128 => Module::Attention,
            Kernel::GemmBf16 | Kernel::GemvBf16 | Kernel::CastBf16 | Kernel::GemmBf16Tc => {
                Module::Gemm
            }
            Kernel::ArgmaxRows | Kernel::Penalize | Kernel::SampleRows => Module::Sampling,
            Kernel::GemmW8a8 | Kernel::GemvW8a8 | Kernel::GemmW8a8Wg => Module::GemmInt8,
            Kernel::RmsNormQuantI8
            | Kernel::SiluMulQuantI8
            | Kernel::QuantRowsI8
            | Kernel::QuantRowsFp8
            | Kernel::RmsNormQuantFp8
            | Kernel::SiluMulQuantFp8
            | Kernel::RotateQuantI8
            | Kernel::RotateQuantFp8 => Module::Quant,
            Kernel::FwhtBlocks => Module::Hadamard,
            Kernel::GemmFp8 | Kernel::GemvFp8 | Kernel::GemmFp8Wg => Module::GemmFp8,
            Kernel::GemvW4a16 | Kernel::GemmW4a16 | Kernel::GemmW4a16Tc => Module::GemmInt4,
            Kernel::ConvInt8 | Kernel::ConvBf16 | Kernel::ChannelAffine | Kernel::ReluInplace => {
                Module::Conv
            }
        }
    }

    /// Position in [`Kernel::ALL`] (declaration order; tests/cuda_compile.rs checks it).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `extern "C"` name in the module.
    pub fn symbol(self) -> &'static str {
        match self {
            Kernel::RmsNorm => "rms_norm",
            Kernel::AddRmsNorm => "add_rms_norm",
            Kernel::Rope => "rope",
            Kernel::EmbedBf16 => "embed_bf16",
            Kernel::SiluMul => "silu_mul",
            Kernel::AddAssign => "add_assign",
            Kernel::AddBias => "add_bias",
            Kernel::WriteKv => "write_kv",
            Kernel::AttnPartial => "attn_partial",
            Kernel::AttnCombine => "attn_combine",
            Kernel::GemmBf16 => "gemm_bf16",
            Kernel::GemvBf16 => "gemv_bf16",
            Kernel::ArgmaxRows => "argmax_rows",
            Kernel::GemmW8a8 => "gemm_w8a8",
            Kernel::GemvW8a8 => "gemv_w8a8",
            Kernel::RmsNormQuantI8 => "rms_norm_quant_i8",
            Kernel::SiluMulQuantI8 => "silu_mul_quant_i8",
            Kernel::QuantRowsI8 => "quant_rows_i8",
            Kernel::FwhtBlocks => "fwht_blocks",
            Kernel::GemmFp8 => "gemm_fp8",
            Kernel::QuantRowsFp8 => "quant_rows_fp8",
            Kernel::GemvW4a16 => "gemv_w4a16",
            Kernel::GemmW4a16 => "gemm_w4a16",
            Kernel::ConvInt8 => "conv_int8",
            Kernel::ConvBf16 => "conv_bf16",
            Kernel::ChannelAffine => "channel_affine",
            Kernel::ReluInplace => "relu_inplace",
            Kernel::GemvFp8 => "gemv_fp8",
            Kernel::RmsNormQuantFp8 => "rms_norm_quant_fp8",
            Kernel::SiluMulQuantFp8 => "silu_mul_quant_fp8",
            Kernel::CastBf16 => "cast_bf16",
            Kernel::GemmBf16Tc => "gemm_bf16_tc",
            Kernel::AttnPrefillHd64 => "attn_prefill_hd64",
            Kernel::AttnPrefillHd128 => "attn_prefill_hd128",
            Kernel::Penalize => "penalize",
            Kernel::SampleRows => "sample_rows",
            Kernel::RotateQuantI8 => "rotate_quant_i8",
            Kernel::RotateQuantFp8 => "rotate_quant_fp8",
            Kernel::RopeWriteKv => "rope_write_kv",
            Kernel::GemmW4a16Tc => "gemm_w4a16_tc",
            Kernel::GemmW8a8Wg => "gemm_w8a8_wg",
            Kernel::GemmFp8Wg => "gemm_fp8_wg",
        }
    }
}

/// The architectures CI proves every module compiles for (Ampere, Ada, Hopper).
pub const CI_ARCHES: [&str; 3] = ["sm_80", "sm_89", "sm_90a"];
