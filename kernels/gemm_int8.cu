// W8A8 GEMMs: int8 activations (per-token scale and zero point) times int8 weights (per output
// channel scale), int32 accumulation, and the epilogue of the CPU reference
// (backend/cpu/qgemm.rs gemm_i8_f32), evaluated in the same order without FMA contraction:
//   out[i, j] = (s_a[i] * s_w[j]) * float(acc - zp_a[i] * colsum[j]) + bias[j]
// qa (m, k) and qw (n, k) are row-major int8 (qw is the col-major B of mma .row.col); k must be
// a multiple of 16 (the host pads or falls back). `acc_out`, when not null, receives the raw
// int32 sums (the tests compare them bit for bit with the CPU).
typedef signed char i8;

__device__ __forceinline__ void epilogue(float* out, int* acc_out, int i, int j, int n, int acc,
                                         const float* a_scale, const int* a_zp,
                                         const float* w_scale, const int* colsum,
                                         const float* bias) {
    if (acc_out) acc_out[(size_t)i * n + j] = acc;
    const long long corrected = (long long)acc - (long long)a_zp[i] * (long long)colsum[j];
    float y = __fmul_rn(__fmul_rn(a_scale[i], w_scale[j]), (float)corrected);
    if (bias) y = __fadd_rn(y, bias[j]);
    out[(size_t)i * n + j] = y;
}

// Tiled tensor-core kernel (sm_80+): common.cuh's pipelined tile, 128 x 128 per block, 8 warps
// of 64 x 32 as 4 x 4 mma.m16n8k32 tiles. Grid (ceil(n / 128), ceil(m / 128)), 256 threads.
#define QT_M 128
#define QT_N 128

extern "C" __global__ void __launch_bounds__(256) gemm_w8a8(
    float* __restrict__ out, int* __restrict__ acc_out, const i8* __restrict__ qa,
    const i8* __restrict__ qw, const float* __restrict__ a_scale, const int* __restrict__ a_zp,
    const float* __restrict__ w_scale, const int* __restrict__ colsum,
    const float* __restrict__ bias, int m, int n, int k) {
    int acc[4][4][4];
    tc_gemm_tile<QT_M, QT_N, 2, 4>(acc, qa, qw, m, n, k,
                                    [](int* c, const u32* a, const u32* b) { mma_s8(c, a, b); });
    tc_store<QT_M, QT_N, 2, 4>(acc, m, n, [&](int i, int j, int v) {
        epilogue(out, acc_out, i, j, n, v, a_scale, a_zp, w_scale, colsum, bias);
    });
}

// Decode-sized GEMV (m <= 16): one warp per output column streams its int8 weight row once,
// 16 bytes per lane per step, for every activation row (dp4a, sm_61+). k % 16 == 0.
// 256 threads, grid ceil(n / 8).
#define QV_MAX_M 16

extern "C" __global__ void __launch_bounds__(256) gemv_w8a8(
    float* __restrict__ out, int* __restrict__ acc_out, const i8* __restrict__ qa,
    const i8* __restrict__ qw, const float* __restrict__ a_scale, const int* __restrict__ a_zp,
    const float* __restrict__ w_scale, const int* __restrict__ colsum,
    const float* __restrict__ bias, int m, int n, int k) {
    const int j = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (j >= n) return;
    const uint4* wr = (const uint4*)(qw + (size_t)j * k);
    int acc[QV_MAX_M];
#pragma unroll
    for (int r = 0; r < QV_MAX_M; ++r) acc[r] = 0;
    for (int p = lane; p < (k >> 4); p += 32) {
        const uint4 wv = wr[p];
#pragma unroll
        for (int r = 0; r < QV_MAX_M; ++r) {
            if (r < m) {
                const uint4 av = ((const uint4*)(qa + (size_t)r * k))[p];
                int s = acc[r];
                s = __dp4a((int)av.x, (int)wv.x, s);
                s = __dp4a((int)av.y, (int)wv.y, s);
                s = __dp4a((int)av.z, (int)wv.z, s);
                s = __dp4a((int)av.w, (int)wv.w, s);
                acc[r] = s;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < QV_MAX_M; ++r) {
        if (r < m) {
            int s = acc[r];
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (lane == 0)
                epilogue(out, acc_out, r, j, n, s, a_scale, a_zp, w_scale, colsum, bias);
        }
    }
}

// Hopper (sm_90a): gemm_w8a8's product and epilogue on wgmma (common.cuh's wg_gemm_tile, exact
// int32 sums one wgmma group ahead). 128 x 128 per block, two warpgroups, WG_SMEM bytes of
// dynamic shared memory. Grid (ceil(n / 128), ceil(m / 128)), 256 threads. Elsewhere a trap
// (the host launches it only on sm_90).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void wgmma_s8(int (&d)[64], unsigned long long da,
                                         unsigned long long db, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {"
        WG_REGS64
        "}, %64, %65, p;\n}\n"
        : WG_ACC64("+r", d)
        : "l"(da), "l"(db), "r"(accumulate));
}
#endif

extern "C" __global__ void __launch_bounds__(256, 1) gemm_w8a8_wg(
    float* __restrict__ out, int* __restrict__ acc_out, const i8* __restrict__ qa,
    const i8* __restrict__ qw, const float* __restrict__ a_scale, const int* __restrict__ a_zp,
    const float* __restrict__ w_scale, const int* __restrict__ colsum,
    const float* __restrict__ bias, int m, int n, int k) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(128) unsigned char wg_smem[];
    int acc[64], unused[64];
    wg_gemm_tile<false>(acc, unused, qa, qw, m, n, k, wg_smem,
                        [](int (&d)[64], unsigned long long da, unsigned long long db,
                           int accumulate) { wgmma_s8(d, da, db, accumulate); });
    wg_store(acc, m, n, [&](int i, int j, int v) {
        epilogue(out, acc_out, i, j, n, v, a_scale, a_zp, w_scale, colsum, bias);
    });
#else
    asm volatile("trap;");
#endif
}
