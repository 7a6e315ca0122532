// W4A16: int4 group-quantized weights (GPTQ / compressed-tensors pack_quantized: byte t / 2 of
// a row holds value t in its low nibble when t is even, the high one when odd; value
// (q - 8 - zero) * scale, scale and zero per (row, group of `group` values)) against BF16
// activations: x arrives in f32 and is rounded to BF16 here, as the CPU backend does, so both
// multiply the same products. Accumulation f32; the group scale applied once per group.
//
// gemv_w4a16 (m <= 8, decode): one warp per weight row streams it once in 16-byte loads (32
// values per lane per step; k and group multiples of 32, checked by the host) for all m rows;
// x is read as float4 (rows 16-byte aligned as k % 32 == 0). 256 threads, grid ceil(n / 8).
//
// gemm_w4a16 (any m, n, k, even group): common.cuh's gemm_tile64 with the weights decoded to
// f32 as they are staged (dequantize-in-tile). Grid (ceil(n / 64), ceil(m / 64)), 256 threads.

#define W4_GEMV_MAX_M 8

__device__ __forceinline__ float bf16_round(float v) { return bf16_to_f32(f32_to_bf16(v)); }

// d[r] += Σ_e bf16(x[r, e]) · (nibble e of `word` − z8) for the 8 values of one 32-bit word
// (nibble e is value e: two per byte, low first, bytes little-endian).
__device__ __forceinline__ void w4_dot8(float* d, u32 word, int z8, const float* xp, int m,
                                        int k) {
    float wv[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) wv[e] = (float)((int)((word >> (4 * e)) & 15u) - z8);
#pragma unroll
    for (int r = 0; r < W4_GEMV_MAX_M; ++r) {
        if (r < m) {
            const float4 a = *(const float4*)(xp + (size_t)r * k);
            const float4 b = *(const float4*)(xp + (size_t)r * k + 4);
            float t = d[r];
            t = fmaf(bf16_round(a.x), wv[0], t);
            t = fmaf(bf16_round(a.y), wv[1], t);
            t = fmaf(bf16_round(a.z), wv[2], t);
            t = fmaf(bf16_round(a.w), wv[3], t);
            t = fmaf(bf16_round(b.x), wv[4], t);
            t = fmaf(bf16_round(b.y), wv[5], t);
            t = fmaf(bf16_round(b.z), wv[6], t);
            t = fmaf(bf16_round(b.w), wv[7], t);
            d[r] = t;
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) gemv_w4a16(
    float* __restrict__ out, const float* __restrict__ x, const unsigned char* __restrict__ wq,
    const float* __restrict__ scale, const signed char* __restrict__ zero,
    const float* __restrict__ bias, int m, int n, int k, int group) {
    const int j = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (j >= n) return;
    const int groups = (k + group - 1) / group;
    const uint4* wr = (const uint4*)(wq + (size_t)j * (k >> 1));
    float acc[W4_GEMV_MAX_M];
#pragma unroll
    for (int r = 0; r < W4_GEMV_MAX_M; ++r) acc[r] = 0.0f;
    // step p covers values 32p .. 32p + 31, all in group 32p / group (group % 32 == 0)
    for (int p = lane; p < (k >> 5); p += 32) {
        const uint4 v = wr[p];
        const int gi = (p << 5) / group;
        const float s = scale[(size_t)j * groups + gi];
        const int z8 = 8 + (zero ? (int)zero[(size_t)j * groups + gi] : 0);
        const float* xp = x + (p << 5);
        float d[W4_GEMV_MAX_M];
#pragma unroll
        for (int r = 0; r < W4_GEMV_MAX_M; ++r) d[r] = 0.0f;
        w4_dot8(d, v.x, z8, xp, m, k);
        w4_dot8(d, v.y, z8, xp + 8, m, k);
        w4_dot8(d, v.z, z8, xp + 16, m, k);
        w4_dot8(d, v.w, z8, xp + 24, m, k);
#pragma unroll
        for (int r = 0; r < W4_GEMV_MAX_M; ++r) acc[r] = fmaf(d[r], s, acc[r]);
    }
#pragma unroll
    for (int r = 0; r < W4_GEMV_MAX_M; ++r) {
        if (r < m) {
            const float v = warp_sum(acc[r]);
            if (lane == 0) out[(size_t)r * n + j] = v + (bias ? bias[j] : 0.0f);
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) gemm_w4a16(
    float* __restrict__ out, const float* __restrict__ x, const unsigned char* __restrict__ wq,
    const float* __restrict__ scale, const signed char* __restrict__ zero,
    const float* __restrict__ bias, int m, int n, int k, int group) {
    const int groups = (k + group - 1) / group;
    gemm_tile64(
        out, bias, m, n, k, [=](int i, int t) { return bf16_round(x[(size_t)i * k + t]); },
        [=](int j, int t) {
            const unsigned b = wq[((size_t)j * k + t) >> 1];
            const int q = (int)((t & 1) ? (b >> 4) : (b & 15u));
            const size_t g = (size_t)j * groups + t / group;
            return (float)(q - 8 - (zero ? (int)zero[g] : 0)) * scale[g];
        });
}
