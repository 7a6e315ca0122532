// FP8 E4M3 W8A8 (sm_89+): e4m3 activations with a per-token scale times e4m3 weights with a
// per-output-channel scale, f32 accumulation on tensor cores (mma.m16n8k32 e4m3), epilogue
// out[i, j] = (s_a[i] * s_w[j]) * acc + bias[j]. common.cuh's pipelined tile at 128 x 32 per
// block, 8 warps of 32 x 16: on sm_90a this mma is not native (ptxas emulates it; Hopper runs
// gemm_fp8_wg below instead) and warp tiles of 32 x 32 spill there. k a multiple of 16.
// Grid (ceil(n / 32), ceil(m / 128)), 256 threads.
// Ampere has no FP8 tensor cores: there the kernels compile to a trap and the host never
// launches them (an FP8 checkpoint on sm_80 is a clear error naming the GPU's capability).
typedef unsigned char u8;

#define FT_M 128
#define FT_N 32

__device__ __forceinline__ void mma_e4m3(float* c, const u32* a, const u32* b) {
#if __CUDA_ARCH__ >= 890
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    asm volatile("trap;");
#endif
}

extern "C" __global__ void __launch_bounds__(256) gemm_fp8(
    float* __restrict__ out, const u8* __restrict__ qa, const u8* __restrict__ qw,
    const float* __restrict__ a_scale, const float* __restrict__ w_scale,
    const float* __restrict__ bias, int m, int n, int k) {
    float acc[2][2][4];
    tc_gemm_tile<FT_M, FT_N, 4, 2>(
        acc, qa, qw, m, n, k, [](float* c, const u32* a, const u32* b) { mma_e4m3(c, a, b); });
    tc_store<FT_M, FT_N, 4, 2>(acc, m, n, [&](int i, int j, float v) {
        float y = __fmul_rn(__fmul_rn(a_scale[i], w_scale[j]), v);
        if (bias) y = __fadd_rn(y, bias[j]);
        out[(size_t)i * n + j] = y;
    });
}

// Two e4m3 codes (low byte first) to f32, exactly (every e4m3 value is an f16 and an f32).
__device__ __forceinline__ void e4m3x2_to_f32(unsigned short v, float& lo, float& hi) {
#if __CUDA_ARCH__ >= 890
    u32 h2;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h2) : "h"(v));
    const unsigned short l = (unsigned short)(h2 & 0xffffu), h = (unsigned short)(h2 >> 16);
    asm("cvt.f32.f16 %0, %1;" : "=f"(lo) : "h"(l));
    asm("cvt.f32.f16 %0, %1;" : "=f"(hi) : "h"(h));
#else
    asm volatile("trap;");
    lo = hi = 0.0f;
#endif
}

// Decode-sized FP8 (m <= 8): one warp per weight row streams it once in 16-byte loads (k a
// multiple of 16, so every row is 16-byte aligned) and decodes it to f32 (exact products).
// The activation rows are decoded once per block, a tile of FP8_GEMV_TILE 16-byte chunks at a
// time, into shared memory that the block's 8 warps (8 output columns) share; decoding them
// in every warp cost as much as the weights. Each lane still sums chunks lane, lane + 32, ...
// in order, so the result is the same bits as decoding in registers. Epilogue as gemm_fp8.
// 256 threads, grid ceil(n / 8), 32 KiB of static shared memory.
#define FP8_GEMV_MAX_M 8
#define FP8_GEMV_TILE 64

__device__ __forceinline__ void e4m3x16_to_f32(uint4 v, float* f) {
    const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        e4m3x2_to_f32((unsigned short)(w[i] & 0xffffu), f[4 * i], f[4 * i + 1]);
        e4m3x2_to_f32((unsigned short)(w[i] >> 16), f[4 * i + 2], f[4 * i + 3]);
    }
}

extern "C" __global__ void __launch_bounds__(256) gemv_fp8(
    float* __restrict__ out, const u8* __restrict__ qa, const u8* __restrict__ qw,
    const float* __restrict__ a_scale, const float* __restrict__ w_scale,
    const float* __restrict__ bias, int m, int n, int k) {
    // (row, element of the chunk, chunk): a lane's loads at consecutive chunks hit
    // consecutive banks
    __shared__ float a_tile[FP8_GEMV_MAX_M][16][FP8_GEMV_TILE];
    const int j = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    // every thread takes part in the tile loads and barriers, a column past n or not
    const bool live = j < n;
    const uint4* wr = (const uint4*)(qw + (size_t)(live ? j : 0) * k);
    float acc[FP8_GEMV_MAX_M];
#pragma unroll
    for (int r = 0; r < FP8_GEMV_MAX_M; ++r) acc[r] = 0.0f;
    const int chunks = k >> 4, rows = min(m, FP8_GEMV_MAX_M);
    for (int p0 = 0; p0 < chunks; p0 += FP8_GEMV_TILE) {
        const int tile = min(FP8_GEMV_TILE, chunks - p0);
        for (int c = threadIdx.x; c < rows * tile; c += blockDim.x) {
            const int r = c / tile, q = c - r * tile;
            float av[16];
            e4m3x16_to_f32(((const uint4*)(qa + (size_t)r * k))[p0 + q], av);
#pragma unroll
            for (int e = 0; e < 16; ++e) a_tile[r][e][q] = av[e];
        }
        __syncthreads();
        if (live) {
            for (int q = lane; q < tile; q += 32) {
                float wv[16];
                e4m3x16_to_f32(wr[p0 + q], wv);
#pragma unroll
                for (int r = 0; r < FP8_GEMV_MAX_M; ++r) {
                    if (r < rows) {
#pragma unroll
                        for (int e = 0; e < 16; ++e) acc[r] = fmaf(a_tile[r][e][q], wv[e], acc[r]);
                    }
                }
            }
        }
        __syncthreads();
    }
    if (!live) return;
#pragma unroll
    for (int r = 0; r < FP8_GEMV_MAX_M; ++r) {
        if (r < rows) {
            const float v = warp_sum(acc[r]);
            if (lane == 0) {
                float y = __fmul_rn(__fmul_rn(a_scale[r], w_scale[j]), v);
                if (bias) y = __fadd_rn(y, bias[j]);
                out[(size_t)r * n + j] = y;
            }
        }
    }
}

// Hopper (sm_90a): gemm_fp8's product and epilogue on wgmma e4m3 (common.cuh's wg_gemm_tile,
// the tensor cores' sums promoted to f32 every 128 values). 128 x 128 per block, two
// warpgroups, WG_SMEM bytes of dynamic shared memory. Grid (ceil(n / 128), ceil(m / 128)),
// 256 threads. Elsewhere a trap (the host launches it only on sm_90).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void wgmma_e4m3(float (&d)[64], unsigned long long da,
                                           unsigned long long db, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {"
        WG_REGS64
        "}, %64, %65, p, 1, 1;\n}\n"
        : WG_ACC64("+f", d)
        : "l"(da), "l"(db), "r"(accumulate));
}
#endif

extern "C" __global__ void __launch_bounds__(256, 1) gemm_fp8_wg(
    float* __restrict__ out, const u8* __restrict__ qa, const u8* __restrict__ qw,
    const float* __restrict__ a_scale, const float* __restrict__ w_scale,
    const float* __restrict__ bias, int m, int n, int k) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(128) unsigned char wg_smem[];
    float acc[64], part[64];
    wg_gemm_tile<true>(acc, part, qa, qw, m, n, k, wg_smem,
                       [](float (&d)[64], unsigned long long da, unsigned long long db,
                          int accumulate) { wgmma_e4m3(d, da, db, accumulate); });
    wg_store(acc, m, n, [&](int i, int j, float v) {
        float y = __fmul_rn(__fmul_rn(a_scale[i], w_scale[j]), v);
        if (bias) y = __fadd_rn(y, bias[j]);
        out[(size_t)i * n + j] = y;
    });
#else
    asm volatile("trap;");
#endif
}
