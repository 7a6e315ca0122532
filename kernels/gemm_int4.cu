// W4A16: int4 group-quantized weights (GPTQ / compressed-tensors pack_quantized: byte t / 2 of
// a row holds value t in its low nibble when t is even, the high one when odd; value
// (q - 8 - zero) * scale, scale and zero per (row, group of `group` values)) against BF16
// activations: x is rounded from f32 to BF16 as the CPU backend rounds it (cast_bf16 before
// the GEMV and the tensor-core GEMM, in the tile loader of the fallback), so both multiply the
// same products. Accumulation f32; the group scale applied once per group.
//
// gemv_w4a16 (m <= 8, decode): one warp per weight row streams it once in 16-byte loads (32
// values per lane per step; k and group multiples of 32, checked by the host) for all m rows;
// the activations arrive rounded to bf16 once (cast_bf16, as for the tensor-core kernel), 8 per
// 16-byte load (rows 16-byte aligned as k % 32 == 0), and widen to f32 with a shift; nibbles
// decode with the magic-number trick (2^23 + q as float bits, minus 2^23 + 8 + zero, exact).
// 256 threads, grid ceil(n / 8).
//
// gemm_w4a16_tc (prefill; k and group multiples of 32): tensor cores, below.
//
// gemm_w4a16 (any m, n, k, even group; the fallback): common.cuh's gemm_tile64 with the weights
// decoded to f32 as they are staged. Grid (ceil(n / 64), ceil(m / 64)), 256 threads.

#define W4_GEMV_MAX_M 8

__device__ __forceinline__ float bf16_round(float v) { return bf16_to_f32(f32_to_bf16(v)); }

// d[r] += Σ_e xb[r, e] · (nibble e of `word` − z) for the 8 values of one 32-bit word (nibble
// e is value e: two per byte, low first, bytes little-endian); zf = 2^23 + z.
__device__ __forceinline__ void w4_dot8(float* d, u32 word, float zf, const bf16_t* xp,
                                        int m, int k) {
    float wv[8];
#pragma unroll
    for (int e = 0; e < 8; ++e)
        wv[e] = __uint_as_float(0x4B000000u | ((word >> (4 * e)) & 15u)) - zf;
#pragma unroll
    for (int r = 0; r < W4_GEMV_MAX_M; ++r) {
        if (r < m) {
            const uint4 a = *(const uint4*)(xp + (size_t)r * k);
            const u32 h[4] = {a.x, a.y, a.z, a.w};
            float t = d[r];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                t = fmaf(__uint_as_float(h[i] << 16), wv[2 * i], t);
                t = fmaf(__uint_as_float(h[i] & 0xffff0000u), wv[2 * i + 1], t);
            }
            d[r] = t;
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) gemv_w4a16(
    float* __restrict__ out, const bf16_t* __restrict__ xb,
    const unsigned char* __restrict__ wq, const float* __restrict__ scale,
    const signed char* __restrict__ zero, const float* __restrict__ bias, int m, int n, int k,
    int group) {
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
        const float zf = 8388608.0f + (float)z8;
        const bf16_t* xp = xb + (p << 5);
        float d[W4_GEMV_MAX_M];
#pragma unroll
        for (int r = 0; r < W4_GEMV_MAX_M; ++r) d[r] = 0.0f;
        w4_dot8(d, v.x, zf, xp, m, k);
        w4_dot8(d, v.y, zf, xp + 8, m, k);
        w4_dot8(d, v.z, zf, xp + 16, m, k);
        w4_dot8(d, v.w, zf, xp + 24, m, k);
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

// gemm_w4a16_tc: out (m, n) = xb (m, k) . W (n, k)^T [+ bias] on mma.m16n8k16 bf16, xb the
// activations rounded to bf16 once (cast_bf16, as the CPU rounds them). k and group multiples of
// 32 (so packed rows are 16-byte aligned and a 32-value stage never straddles a group); any m, n.
// Per stage: 64 bytes (32 values) of every xb row and the 16 packed bytes of every weight row,
// by cp.async, double-buffered. A B fragment word (values 2t, 2t + 1 of a k step, the lower k in
// the low half) is one packed byte (low nibble = even value), decoded in registers into the exact
// bf16 integers q − 8 − zero (|q − 8 − zero| <= 143 < 256). The tensor cores sum each group into
// `part`, which is scaled into `acc` once per group (one FMA), as the CPU's bf16 kernel
// (backend/cpu/int4_bf16.rs) applies the group scale: the products are the CPU's exactly, only the
// summation order differs. 128 x 128 per block, 8 warps of 64 x 32 (WARPS 2 x 4).
// Grid (ceil(n / 128), ceil(m / 128)), 256 threads.
#define W4T_M 128
#define W4T_N 128
#define W4T_WM 2
#define W4T_WN 4
#define W4T_MT (W4T_M / W4T_WM / 16)
#define W4T_NT (W4T_N / W4T_WN / 8)
#define W4T_STAGE 32

// Values lo and hi (nibbles of one byte) minus z8, as an mma word of two exact bf16: the float
// 2^23 + q minus (2^23 + z8) is exact, and so is its bf16 rounding.
__device__ __forceinline__ u32 w4_pair_bf16(unsigned b, float z8big) {
    const float lo = __uint_as_float(0x4b000000u | (b & 15u)) - z8big;
    const float hi = __uint_as_float(0x4b000000u | ((b >> 4) & 15u)) - z8big;
    return pack_bf16x2(lo, hi);
}

extern "C" __global__ void __launch_bounds__(256) gemm_w4a16_tc(
    float* __restrict__ out, const bf16_t* __restrict__ xb, const unsigned char* __restrict__ wq,
    const float* __restrict__ scale, const signed char* __restrict__ zero,
    const float* __restrict__ bias, int m, int n, int k, int group) {
    __shared__ __align__(16) u32 as[2][W4T_M * TC_LD];            // (rows, 16 words + pad)
    __shared__ __align__(16) unsigned char bs[2][W4T_N * 16];      // (rows, 16 packed bytes)
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int wm = (warp / W4T_WN) * (W4T_M / W4T_WM), wn = (warp % W4T_WN) * (W4T_N / W4T_WN);
    const int m0 = blockIdx.y * W4T_M, n0 = blockIdx.x * W4T_N;
    const int groups = (k + group - 1) / group, kb = 2 * k, pb = k >> 1; // bytes: xb, packed rows
    float acc[W4T_MT][W4T_NT][4], part[W4T_MT][W4T_NT][4];
#pragma unroll
    for (int i = 0; i < W4T_MT; ++i)
#pragma unroll
        for (int j = 0; j < W4T_NT; ++j)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[i][j][c] = part[i][j][c] = 0.0f;
    // the weight row of this lane's B fragments, per n tile
    int brow[W4T_NT];
#pragma unroll
    for (int j = 0; j < W4T_NT; ++j) brow[j] = n0 + wn + j * 8 + g;
    const int stages = k / W4T_STAGE;
    auto stage_b = [&](unsigned char* dst, int s) {
        for (int r = threadIdx.x; r < W4T_N; r += blockDim.x) {
            const int gr = n0 + r;
            const bool in = gr < n;
            cp_async16(dst + r * 16, in ? wq + (size_t)gr * pb + s * 16 : wq, in ? 16 : 0);
        }
    };
    tc_stage<W4T_M>(as[0], (const unsigned char*)xb, m0, m, kb, 0);
    stage_b(bs[0], 0);
    cp_async_commit();
    float z8big[W4T_NT];
    for (int s = 0; s < stages; ++s) {
        const int cur = s & 1, gi = (s * W4T_STAGE) / group;
        if (s + 1 < stages) {
            tc_stage<W4T_M>(as[cur ^ 1], (const unsigned char*)xb, m0, m, kb,
                            (s + 1) * W4T_STAGE * 2);
            stage_b(bs[cur ^ 1], s + 1);
        }
        cp_async_commit();
        if ((s * W4T_STAGE) % group == 0) { // a group starts: its zero points
#pragma unroll
            for (int j = 0; j < W4T_NT; ++j) {
                const int z = (zero && brow[j] < n) ? (int)zero[(size_t)brow[j] * groups + gi] : 0;
                z8big[j] = 8388608.0f + (float)(8 + z);
            }
        }
        cp_async_wait<1>();
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < W4T_STAGE / 16; ++kk) {
            u32 af[W4T_MT][4], bf[W4T_NT][2];
#pragma unroll
            for (int i = 0; i < W4T_MT; ++i) frag_a(af[i], as[cur], TC_LD, wm + i * 16, kk * 8, g, t);
#pragma unroll
            for (int j = 0; j < W4T_NT; ++j) {
                const unsigned char* row = bs[cur] + (wn + j * 8 + g) * 16 + kk * 8 + t;
                bf[j][0] = w4_pair_bf16(row[0], z8big[j]);
                bf[j][1] = w4_pair_bf16(row[4], z8big[j]);
            }
#pragma unroll
            for (int i = 0; i < W4T_MT; ++i)
#pragma unroll
                for (int j = 0; j < W4T_NT; ++j) mma_bf16(part[i][j], af[i], bf[j]);
        }
        __syncthreads();
        if (((s + 1) * W4T_STAGE) % group == 0 || s + 1 == stages) { // a group ends: scale it in
#pragma unroll
            for (int j = 0; j < W4T_NT; ++j) {
                const int c0 = n0 + wn + j * 8 + 2 * t;
                const float s0 = c0 < n ? scale[(size_t)c0 * groups + gi] : 0.0f;
                const float s1 = c0 + 1 < n ? scale[(size_t)(c0 + 1) * groups + gi] : 0.0f;
#pragma unroll
                for (int i = 0; i < W4T_MT; ++i)
#pragma unroll
                    for (int c = 0; c < 4; ++c) {
                        acc[i][j][c] = fmaf(part[i][j][c], (c & 1) ? s1 : s0, acc[i][j][c]);
                        part[i][j][c] = 0.0f;
                    }
            }
        }
    }
    tc_store<W4T_M, W4T_N, W4T_WM, W4T_WN>(acc, m, n, [&](int i, int j, float v) {
        out[(size_t)i * n + j] = bias ? v + bias[j] : v;
    });
}
