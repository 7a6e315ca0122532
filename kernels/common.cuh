// Shared by every ferroq kernel. NVRTC compiles each module as this file followed by the
// module's source, with no CUDA headers: bf16 is a 16-bit integer converted with inline PTX
// (cvt.rn.bf16.f32 needs sm_80+), and the reductions use warp shuffles. Deployment needs only
// libcuda + libnvrtc.
typedef unsigned short bf16_t;
typedef unsigned int u32;

__device__ __forceinline__ float bf16_to_f32(bf16_t h) {
    return __uint_as_float(((u32)h) << 16);
}

__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    bf16_t r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}

#define NEG_INF __int_as_float(0xff800000)

// Sum (MAX = false) or maximum (MAX = true) across the warp; every lane gets it.
template <bool MAX>
__device__ __forceinline__ float warp_reduce(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        const float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = MAX ? fmaxf(v, w) : v + w;
    }
    return v;
}

__device__ __forceinline__ float warp_sum(float v) { return warp_reduce<false>(v); }
__device__ __forceinline__ float warp_max(float v) { return warp_reduce<true>(v); }

// Sum or maximum over the block (blockDim.x a multiple of 32, at most 1024); `sh` holds 32
// floats. Every thread gets the result.
template <bool MAX>
__device__ __forceinline__ float block_reduce(float v, float* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_reduce<MAX>(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = (threadIdx.x < (blockDim.x >> 5)) ? sh[threadIdx.x] : (MAX ? NEG_INF : 0.0f);
    if (warp == 0) v = warp_reduce<MAX>(v);
    if (threadIdx.x == 0) sh[0] = v;
    __syncthreads();
    return sh[0];
}

__device__ __forceinline__ float block_sum(float v, float* sh) { return block_reduce<false>(v, sh); }
__device__ __forceinline__ float block_max(float v, float* sh) { return block_reduce<true>(v, sh); }

// 8-bit tensor-core GEMMs (gemm_int8.cu, gemm_fp8.cu) stage k steps of 32 bytes per row as 8
// 32-bit words, padded by one word per shared row.
#define MMA8_KW 8

// Stage rows r0 .. r0 + ROWS of the row-major byte matrix src (rows_total, k; k a multiple of
// 4), words kw0 .. kw0 + MMA8_KW, into dst; zero outside the matrix. The whole block shares it.
template <int ROWS>
__device__ __forceinline__ void stage_words(u32 (*dst)[MMA8_KW + 1], const void* src, int r0,
                                            int rows_total, int k, int kw0) {
    const int kw_total = k >> 2;
    for (int e = threadIdx.x; e < ROWS * MMA8_KW; e += blockDim.x) {
        const int r = e / MMA8_KW, c = e % MMA8_KW, gr = r0 + r, gk = kw0 + c;
        dst[r][c] = (gr < rows_total && gk < kw_total)
                        ? ((const u32*)((const unsigned char*)src + (size_t)gr * k))[gk]
                        : 0u;
    }
}

// The m16n8k32 8-bit A fragment of rows r .. r + 15 (row-major, 4 words per lane) and the B
// fragment of columns (weight rows) r .. r + 7, from staged words. g = lane / 4, t = lane % 4.
__device__ __forceinline__ void frag_a8(u32* a, const u32 (*s)[MMA8_KW + 1], int r, int g, int t) {
    a[0] = s[r + g][t];
    a[1] = s[r + g + 8][t];
    a[2] = s[r + g][t + 4];
    a[3] = s[r + g + 8][t + 4];
}

__device__ __forceinline__ void frag_b8(u32* b, const u32 (*s)[MMA8_KW + 1], int r, int g, int t) {
    b[0] = s[r + g][t];
    b[1] = s[r + g][t + 4];
}

// One m16n8k32 s8 tensor-core step (sm_80+): c (int32) += a · b from frag_a8 / frag_b8.
__device__ __forceinline__ void mma_s8(int* c, const u32* a, const u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// One m16n8k16 bf16 tensor-core step (sm_80+): c (f32) += a · b. Its fragments have the same
// word layout as the 8-bit ones (a word holds 2 bf16 of consecutive k instead of 4 bytes), so
// frag_a8 / frag_b8 load them from the same staging.
__device__ __forceinline__ void mma_bf16(float* c, const u32* a, const u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// The CUDA-core tiled GEMM both dense fallbacks share (gemm.cu's bf16, gemm_int4.cu's W4A16):
// out (m, n) = x (m, k) . w (n, k)^T [+ bias], 64 x 64 output tiles, 256 threads computing
// 4 x 4 each, k in steps of 16 through shared memory. xval(i, t) and wval(j, t) give the staged
// operands (called only inside the matrices; 0 is staged outside), so any m, n, k. Grid
// (ceil(n / 64), ceil(m / 64)).
#define TILE64 64
#define TILE64_K 16

template <typename XF, typename WF>
__device__ __forceinline__ void gemm_tile64(float* __restrict__ out,
                                            const float* __restrict__ bias, int m, int n, int k,
                                            XF xval, WF wval) {
    __shared__ float xs[TILE64_K][TILE64 + 1];
    __shared__ float ws[TILE64_K][TILE64 + 1];
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int m0 = blockIdx.y * TILE64, n0 = blockIdx.x * TILE64;
    float acc[4][4];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[r][c] = 0.0f;
    for (int k0 = 0; k0 < k; k0 += TILE64_K) {
        for (int e = tid; e < TILE64 * TILE64_K; e += 256) {
            const int i = e / TILE64_K, kk = e % TILE64_K, gi = m0 + i, gk = k0 + kk;
            xs[kk][i] = (gi < m && gk < k) ? xval(gi, gk) : 0.0f;
        }
        for (int e = tid; e < TILE64 * TILE64_K; e += 256) {
            const int j = e / TILE64_K, kk = e % TILE64_K, gj = n0 + j, gk = k0 + kk;
            ws[kk][j] = (gj < n && gk < k) ? wval(gj, gk) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TILE64_K; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int r = 0; r < 4; ++r) a[r] = xs[kk][ty + 16 * r];
#pragma unroll
            for (int c = 0; c < 4; ++c) b[c] = ws[kk][tx + 16 * c];
#pragma unroll
            for (int r = 0; r < 4; ++r)
#pragma unroll
                for (int c = 0; c < 4; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int gi = m0 + ty + 16 * r, gj = n0 + tx + 16 * c;
            if (gi < m && gj < n) out[(size_t)gi * n + gj] = bias ? acc[r][c] + bias[gj] : acc[r][c];
        }
}
