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
