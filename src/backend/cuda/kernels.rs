//! The typed kernel table: every CUDA kernel ferroq launches is a `Kernel` of a `Module`.
//!
//! - A kernel knows its module (one `kernels/*.cu` file) and `extern "C"` symbol, so call sites
//!   never name kernels as strings and the compile test checks the table against ptxas.
//! - The table is written once (`kernel_table!`); the enums, lists and lookups are generated.
//! - A module's source is `kernels/common.cuh` followed by its file (no CUDA headers).

/// Generates `Module` (one `kernels/*.cu` file, compiled as one CUBIN) and `Kernel` (one
/// `extern "C"` symbol of a module) with their lists, names, sources and lookups.
macro_rules! kernel_table {
    ($($module:ident $file:literal => { $($kernel:ident $symbol:literal,)* })*) => {
        /// One `kernels/*.cu` file, compiled as one CUBIN.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Module {
            $($module,)*
        }

        impl Module {
            const COUNT: usize = [$($file),*].len();
            pub const ALL: [Module; Self::COUNT] = [$(Module::$module),*];

            /// The file stem under `kernels/`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Module::$module => $file,)*
                }
            }

            fn body(self) -> &'static str {
                match self {
                    $(Module::$module => include_str!(concat!("../../../kernels/", $file, ".cu")),)*
                }
            }
        }

        /// Every kernel, by module.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Kernel {
            $($($kernel,)*)*
        }

        impl Kernel {
            const COUNT: usize = [$($($symbol),*),*].len();
            pub const ALL: [Kernel; Self::COUNT] = [$($(Kernel::$kernel),*),*];

            pub fn module(self) -> Module {
                match self {
                    $($(Kernel::$kernel => Module::$module,)*)*
                }
            }

            /// The `extern "C"` name in the module.
            pub fn symbol(self) -> &'static str {
                match self {
                    $($(Kernel::$kernel => $symbol,)*)*
                }
            }
        }
    };
}

kernel_table! {
    Norm "norm" => {
        RmsNorm "rms_norm",
        AddRmsNorm "add_rms_norm",
    }
    Rope "rope" => {
        Rope "rope",
        RopeWriteKv "rope_write_kv",
    }
    Embed "embed" => {
        EmbedBf16 "embed_bf16",
    }
    Activation "activation" => {
        SiluMul "silu_mul",
        GeluMul "gelu_mul",
        Pointwise "pointwise",
        AddAssign "add_assign",
        AddBias "add_bias",
    }
    Kv "kv" => {
        WriteKv "write_kv",
    }
    Attention "attention" => {
        AttnPartial "attn_partial",
        AttnCombine "attn_combine",
        AttnPrefillHd64 "attn_prefill_hd64",
        AttnPrefillHd128 "attn_prefill_hd128",
    }
    Gemm "gemm" => {
        GemmBf16 "gemm_bf16",
        GemvBf16 "gemv_bf16",
        CastBf16 "cast_bf16",
        GemmBf16Tc "gemm_bf16_tc",
    }
    Sampling "sampling" => {
        ArgmaxRows "argmax_rows",
        Penalize "penalize",
        SampleRows "sample_rows",
    }
    GemmInt8 "gemm_int8" => {
        GemmW8a8 "gemm_w8a8",
        GemvW8a8 "gemv_w8a8",
        GemmW8a8Wg "gemm_w8a8_wg",
    }
    Quant "quant" => {
        RmsNormQuantI8 "rms_norm_quant_i8",
        SiluMulQuantI8 "silu_mul_quant_i8",
        QuantRowsI8 "quant_rows_i8",
        QuantRowsFp8 "quant_rows_fp8",
        RmsNormQuantFp8 "rms_norm_quant_fp8",
        SiluMulQuantFp8 "silu_mul_quant_fp8",
        RotateQuantI8 "rotate_quant_i8",
        RotateQuantFp8 "rotate_quant_fp8",
    }
    Hadamard "hadamard" => {
        FwhtBlocks "fwht_blocks",
    }
    GemmFp8 "gemm_fp8" => {
        GemmFp8 "gemm_fp8",
        GemvFp8 "gemv_fp8",
        GemmFp8Wg "gemm_fp8_wg",
    }
    GemmInt4 "gemm_int4" => {
        GemvW4a16 "gemv_w4a16",
        GemmW4a16 "gemm_w4a16",
        GemmW4a16Tc "gemm_w4a16_tc",
    }
    Conv "conv" => {
        ConvInt8 "conv_int8",
        ConvBf16 "conv_bf16",
        ChannelAffine "channel_affine",
        ReluInplace "relu_inplace",
    }
}

const COMMON: &str = include_str!("../../../kernels/common.cuh");

impl Module {
    /// What NVRTC compiles: the common header, then the module (a `#line` keeps error line
    /// numbers pointing into the module's own file).
    pub fn source(self) -> String {
        format!("{COMMON}\n#line 1 \"{}.cu\"\n{}", self.name(), self.body())
    }

    pub fn kernels(self) -> impl Iterator<Item = Kernel> {
        Kernel::ALL.into_iter().filter(move |k| k.module() == self)
    }
}

impl Kernel {
    /// Position in [`Kernel::ALL`] (declaration order; tests/cuda_compile.rs checks it).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The architectures CI proves every module compiles for (Ampere, Ada, Hopper).
pub const CI_ARCHES: [&str; 3] = ["sm_80", "sm_89", "sm_90a"];
