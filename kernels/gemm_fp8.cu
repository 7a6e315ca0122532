// FP8 E4M3 W8A8 (sm_89+): e4m3 activations with a per-token scale times e4m3 weights with a
// per-output-channel scale, f32 accumulation on tensor cores (mma.m16n8k32 e4m3), epilogue
// out[i, j] = (s_a[i] * s_w[j]) * acc + bias[j]. Tiling as gemm_int8.cu but 64 x 32 block tiles
// (4 warps of 2 x 2 mma tiles): with 2 x 4 tiles ptxas spills on sm_90a, where this mma is
// not native (Hopper's FP8 path is wgmma, still to write). k steps of 32 as 32-bit words; k a
// multiple of 16. Grid (ceil(n / 32), ceil(m / 64)), 128 threads.
// Ampere has no FP8 tensor cores: there the kernels compile to a trap and the host never
// launches them (FP8 checkpoints on sm_80 take the weight-dequant path or a clear error).
typedef unsigned char u8;

#define FT_M 64
#define FT_N 32
#define FT_NB 2 // n8 tiles per warp

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

extern "C" __global__ void __launch_bounds__(128) gemm_fp8(
    float* __restrict__ out, const u8* __restrict__ qa, const u8* __restrict__ qw,
    const float* __restrict__ a_scale, const float* __restrict__ w_scale,
    const float* __restrict__ bias, int m, int n, int k) {
    __shared__ u32 as[FT_M][MMA8_KW + 1];
    __shared__ u32 bs[FT_N][MMA8_KW + 1];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int m0 = blockIdx.y * FT_M, n0 = blockIdx.x * FT_N;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * (8 * FT_NB);
    float acc[2][FT_NB][4];
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < FT_NB; ++b)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[a][b][c] = 0.0f;
    for (int kw0 = 0; kw0 < (k >> 2); kw0 += MMA8_KW) {
        stage_words<FT_M>(as, qa, m0, m, k, kw0);
        stage_words<FT_N>(bs, qw, n0, n, k, kw0);
        __syncthreads();
        u32 af[2][4], bf[FT_NB][2];
#pragma unroll
        for (int a = 0; a < 2; ++a) frag_a8(af[a], as, wm + a * 16, g, t);
#pragma unroll
        for (int b = 0; b < FT_NB; ++b) frag_b8(bf[b], bs, wn + b * 8, g, t);
#pragma unroll
        for (int a = 0; a < 2; ++a)
#pragma unroll
            for (int b = 0; b < FT_NB; ++b) mma_e4m3(acc[a][b], af[a], bf[b]);
        __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < FT_NB; ++b)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int i = m0 + wm + a * 16 + g + (c >> 1) * 8;
                const int j = n0 + wn + b * 8 + t * 2 + (c & 1);
                if (i < m && j < n) {
                    float y = __fmul_rn(__fmul_rn(a_scale[i], w_scale[j]), acc[a][b][c]);
                    if (bias) y = __fadd_rn(y, bias[j]);
                    out[(size_t)i * n + j] = y;
                }
            }
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
// multiple of 16, so every row is 16-byte aligned), decoding both operands to f32 (exact
// products) for all m rows; epilogue as gemm_fp8. 256 threads, grid ceil(n / 8).
#define FP8_GEMV_MAX_M 8

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
    const int j = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (j >= n) return;
    const uint4* wr = (const uint4*)(qw + (size_t)j * k);
    float acc[FP8_GEMV_MAX_M];
#pragma unroll
    for (int r = 0; r < FP8_GEMV_MAX_M; ++r) acc[r] = 0.0f;
    for (int p = lane; p < (k >> 4); p += 32) {
        float wv[16];
        e4m3x16_to_f32(wr[p], wv);
#pragma unroll
        for (int r = 0; r < FP8_GEMV_MAX_M; ++r) {
            if (r < m) {
                float av[16];
                e4m3x16_to_f32(((const uint4*)(qa + (size_t)r * k))[p], av);
#pragma unroll
                for (int e = 0; e < 16; ++e) acc[r] = fmaf(av[e], wv[e], acc[r]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < FP8_GEMV_MAX_M; ++r) {
        if (r < m) {
            const float v = warp_sum(acc[r]);
            if (lane == 0) {
                float y = __fmul_rn(__fmul_rn(a_scale[r], w_scale[j]), v);
                if (bias) y = __fadd_rn(y, bias[j]);
                out[(size_t)r * n + j] = y;
            }
        }
    }
}
