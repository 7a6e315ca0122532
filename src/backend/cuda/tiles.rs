//! GEMM tiles as named structs, and the dispatch by M and tensor-core kind.
//!
//! - Decode-sized M goes to a memory-bound GEMV (one warp per output column), larger M to the
//!   tiled tensor-core kernel; each `Tile` is what its `.cu` source is written for.
//! - `Kernel::gemm_launch` builds grids from the tile, so the backend, tests and benchmarks launch
//!   the same geometry.
//! - On Hopper (`TensorCores::Wgmma`) the 8-bit GEMMs take the warpgroup-MMA tiles: Hopper runs
//!   `mma.sync` at a fraction of wgmma's rate, and FP8 `mma.sync` only emulated.

use super::kernels::Kernel;
use cudarc::driver::LaunchConfig;

/// One GEMM / GEMV kernel's tiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub kernel: Kernel,
    /// Output rows (tokens) per block; 0 for a GEMV, whose one row of blocks covers every token.
    pub block_m: usize,
    /// Output columns per block.
    pub block_n: usize,
    /// Warps along M and N of a tensor-core tile; (1, warps) for a GEMV (a warp per output
    /// column) and for a CUDA-core tile (16 × 16 threads of 4 × 4 outputs each).
    pub warps: (usize, usize),
    pub threads: u32,
    /// Dynamic shared memory per block (bytes; above 48 KiB the host opts the kernel in).
    pub smem: usize,
}

/// Which tensor-core instructions the 8-bit GEMMs use on this device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorCores {
    /// `mma.sync` (sm_80+; FP8 on sm_89+)
    MmaSync,
    /// `wgmma` from shared memory (sm_90a: H100, H200)
    Wgmma,
}

/// `wg_gemm_tile`'s shared memory: 4 stages of two 128 x 128-byte operands (common.cuh WG_SMEM).
pub const WG_SMEM: usize = 2 * 4 * 128 * 128;

/// GEMVs: 8 warps, a warp per output column, every token row in registers.
const fn gemv(kernel: Kernel) -> Tile {
    Tile {
        kernel,
        block_m: 0,
        block_n: 8,
        warps: (1, 8),
        threads: 256,
        smem: 0,
    }
}

pub const GEMV_BF16: Tile = gemv(Kernel::GemvBf16);
pub const GEMV_W8A8: Tile = gemv(Kernel::GemvW8a8);
pub const GEMV_FP8: Tile = gemv(Kernel::GemvFp8);
pub const GEMV_W4A16: Tile = gemv(Kernel::GemvW4a16);
/// `tc_gemm_tile<128, 128, 2, 4>` on bf16 `mma.m16n8k16`.
pub const TC_BF16_128: Tile = Tile {
    kernel: Kernel::GemmBf16Tc,
    block_m: 128,
    block_n: 128,
    warps: (2, 4),
    threads: 256,
    smem: 0,
};
/// `tc_gemm_tile<128, 128, 2, 4>` on s8 `mma.m16n8k32`.
pub const TC_W8A8_128: Tile = Tile {
    kernel: Kernel::GemmW8a8,
    block_m: 128,
    block_n: 128,
    warps: (2, 4),
    threads: 256,
    smem: 0,
};
/// `tc_gemm_tile<128, 32, 4, 2>` on e4m3 `mma.m16n8k32` (a wider warp tile spills on sm_90a).
pub const TC_FP8_128X32: Tile = Tile {
    kernel: Kernel::GemmFp8,
    block_m: 128,
    block_n: 32,
    warps: (4, 2),
    threads: 256,
    smem: 0,
};
/// `gemm_tile64` on CUDA cores: f32 activations against bf16 weights (k not a multiple of 8).
pub const CORE_BF16_64: Tile = Tile {
    kernel: Kernel::GemmBf16,
    block_m: 64,
    block_n: 64,
    warps: (1, 8),
    threads: 256,
    smem: 0,
};
/// `gemm_tile64` with int4 groups dequantized into the tile.
pub const CORE_W4A16_64: Tile = Tile {
    kernel: Kernel::GemmW4a16,
    block_m: 64,
    block_n: 64,
    warps: (1, 8),
    threads: 256,
    smem: 0,
};

/// `gemm_w4a16_tc`: bf16 `mma.m16n8k16` with int4 weights decoded in registers.
pub const TC_W4A16_128: Tile = Tile {
    kernel: Kernel::GemmW4a16Tc,
    block_m: 128,
    block_n: 128,
    warps: (2, 4),
    threads: 256,
    smem: 0,
};
/// `wg_gemm_tile` on s8 `wgmma.m64n128k32`: two warpgroups of 64 rows (8 warps of 16 rows).
pub const WG_W8A8_128: Tile = Tile {
    kernel: Kernel::GemmW8a8Wg,
    block_m: 128,
    block_n: 128,
    warps: (8, 1),
    threads: 256,
    smem: WG_SMEM,
};
/// `wg_gemm_tile` on e4m3 `wgmma.m64n128k32`, sums promoted to f32 per 128 values.
pub const WG_FP8_128: Tile = Tile {
    kernel: Kernel::GemmFp8Wg,
    block_m: 128,
    block_n: 128,
    warps: (8, 1),
    threads: 256,
    smem: WG_SMEM,
};

/// Every tile, for `Kernel::gemm_launch` and the compile test.
pub const TILES: [Tile; 12] = [
    GEMV_BF16,
    GEMV_W8A8,
    GEMV_FP8,
    GEMV_W4A16,
    TC_BF16_128,
    TC_W8A8_128,
    TC_FP8_128X32,
    CORE_BF16_64,
    CORE_W4A16_64,
    TC_W4A16_128,
    WG_W8A8_128,
    WG_FP8_128,
];

/// The weight kinds a linear multiplies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKind {
    Bf16,
    W8a8,
    Fp8,
    /// int4 groups of `group` values
    W4a16 {
        group: usize,
    },
}

/// The dispatch table: (kind, largest M its GEMV takes). The int8 GEMV keeps up to 16 token
/// rows in registers; the others 8.
const GEMV_MAX_M: [(GemmKind, usize); 4] = [
    (GemmKind::Bf16, 8),
    (GemmKind::W8a8, 16),
    (GemmKind::Fp8, 8),
    (GemmKind::W4a16 { group: 0 }, 8),
];

impl GemmKind {
    fn gemv_max_m(self) -> usize {
        let same = |k: GemmKind| std::mem::discriminant(&k) == std::mem::discriminant(&self);
        GEMV_MAX_M
            .iter()
            .find(|(k, _)| same(*k))
            .map_or(0, |&(_, m)| m)
    }

    /// The tile for M tokens of in_features k on `tc`: the GEMV while M is decode-sized (and k
    /// suits its vector loads), else the tiled kernel. For BF16 a `TC_BF16_128` pick means "a
    /// tensor-core GEMM": cuBLAS where it is loaded, `gemm_bf16_tc` otherwise.
    pub fn pick(self, m: usize, k: usize, tc: TensorCores) -> Tile {
        let gemv = m <= self.gemv_max_m();
        let wgmma = tc == TensorCores::Wgmma;
        // int4: 16-byte loads of 32 nibbles (the GEMV) and 32-value stages (the tensor-core
        // GEMM) must stay inside a row and a group
        let w4_steps = |group: usize| k.is_multiple_of(32) && group.is_multiple_of(32);
        match self {
            // bf16 pairs: 4-byte aligned rows
            GemmKind::Bf16 if gemv && k.is_multiple_of(2) => GEMV_BF16,
            // 16-byte cp.async rows of bf16
            GemmKind::Bf16 if k.is_multiple_of(8) => TC_BF16_128,
            GemmKind::Bf16 => CORE_BF16_64,
            GemmKind::W8a8 if gemv => GEMV_W8A8,
            GemmKind::W8a8 if wgmma => WG_W8A8_128,
            GemmKind::W8a8 => TC_W8A8_128,
            GemmKind::Fp8 if gemv => GEMV_FP8,
            GemmKind::Fp8 if wgmma => WG_FP8_128,
            GemmKind::Fp8 => TC_FP8_128X32,
            GemmKind::W4a16 { group } if gemv && w4_steps(group) => GEMV_W4A16,
            GemmKind::W4a16 { group } if w4_steps(group) => TC_W4A16_128,
            GemmKind::W4a16 { .. } => CORE_W4A16_64,
        }
    }
}

impl Kernel {
    /// The launch of a GEMM-shaped kernel for an (m, n) output, from its `tiles::Tile` (the
    /// geometry its `.cu` source is written for), once for the backend, the tests and the
    /// benchmarks. None for kernels that are not GEMMs.
    pub fn gemm_launch(self, m: usize, n: usize) -> Option<LaunchConfig> {
        let t = TILES.iter().find(|t| t.kernel == self)?;
        // a GEMV's one row of blocks covers every token
        let rows = if t.block_m == 0 {
            1
        } else {
            m.div_ceil(t.block_m)
        };
        Some(LaunchConfig {
            grid_dim: (n.div_ceil(t.block_n) as u32, rows as u32, 1),
            block_dim: (t.threads, 1, 1),
            shared_mem_bytes: t.smem as u32,
        })
    }
}
