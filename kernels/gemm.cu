// Dense GEMMs with bf16 weights. Prefill-sized products run on tensor cores: the activations
// are rounded to bf16 once (cast_bf16) and gemm_bf16_tc multiplies bf16 x bf16 into f32, the
// fallback where cuBLAS is absent and the kernel the cuBLAS path is tested against. gemm_bf16
// keeps f32 activations on CUDA cores (for k not a multiple of 8); gemv_bf16 is decode.
//
// cast_bf16: out (n) = x rounded to bf16 (nearest even). Grid-stride, any grid.
extern "C" __global__ void cast_bf16(bf16_t* __restrict__ out, const float* __restrict__ x,
                                     int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        out[i] = f32_to_bf16(x[i]);
}

// gemm_bf16_tc: out (m, n) = xb (m, k) . w (n, k)^T [+ bias], both bf16, f32 accumulation on
// mma.m16n8k16 through common.cuh's pipelined tile (128 x 128, 8 warps of 64 x 32); k a
// multiple of 8 (16-byte rows). Grid (ceil(n / 128), ceil(m / 128)), 256 threads.
extern "C" __global__ void __launch_bounds__(256) gemm_bf16_tc(
    float* __restrict__ out, const bf16_t* __restrict__ xb, const bf16_t* __restrict__ w,
    const float* __restrict__ bias, int m, int n, int k) {
    float acc[4][4][4];
    tc_gemm_tile<128, 128, 2, 4>(acc, xb, w, m, n, 2 * k,
                                 [](float* c, const u32* a, const u32* b) { mma_bf16(c, a, b); });
    tc_store<128, 128, 2, 4>(acc, m, n, [&](int i, int j, float v) {
        out[(size_t)i * n + j] = bias ? v + bias[j] : v;
    });
}


// gemm_bf16: out (m, n) = x (m, k) . w (n, k)^T on common.cuh's gemm_tile64 (any m, n, k;
// grid (ceil(n / 64), ceil(m / 64)), 256 threads).
extern "C" __global__ void __launch_bounds__(256) gemm_bf16(
    float* __restrict__ out, const float* __restrict__ x, const bf16_t* __restrict__ w, int m,
    int n, int k) {
    gemm_tile64(
        out, nullptr, m, n, k, [=](int i, int t) { return x[(size_t)i * k + t]; },
        [=](int j, int t) { return bf16_to_f32(w[(size_t)j * k + t]); });
}

// gemv_bf16: the same product for m <= 8 rows (decode), where the GEMM is bound by reading w:
// one warp per output column streams its weight row once for all m rows — 16 bytes (8 bf16)
// per lane per step when k % 8 == 0 (rows 16-byte aligned; x read as float4), else bf16 pairs
// (k even, so every row starts 4-byte aligned; the host uses gemm_bf16 for odd k). Wide loads
// keep enough bytes in flight per SM to approach the HBM bandwidth a decode step is bound by.
// 256 threads, grid ceil(n / 8).
#define GEMV_MAX_M 8

extern "C" __global__ void __launch_bounds__(256) gemv_bf16(
    float* __restrict__ out, const float* __restrict__ x, const bf16_t* __restrict__ w, int m,
    int n, int k) {
    const int j = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (j >= n) return;
    float acc[GEMV_MAX_M];
#pragma unroll
    for (int r = 0; r < GEMV_MAX_M; ++r) acc[r] = 0.0f;
    if ((k & 7) == 0) {
        const uint4* wr = (const uint4*)(w + (size_t)j * k);
#pragma unroll 2
        for (int p = lane; p < (k >> 3); p += 32) {
            const uint4 v = wr[p];
            const u32 words[4] = {v.x, v.y, v.z, v.w};
            float wf[8];
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                wf[2 * q] = __uint_as_float(words[q] << 16);
                wf[2 * q + 1] = __uint_as_float(words[q] & 0xffff0000u);
            }
#pragma unroll
            for (int r = 0; r < GEMV_MAX_M; ++r) {
                if (r < m) {
                    const float4* xr = (const float4*)(x + (size_t)r * k) + 2 * p;
                    const float4 a = xr[0], b = xr[1];
                    acc[r] += a.x * wf[0] + a.y * wf[1] + a.z * wf[2] + a.w * wf[3] +
                              b.x * wf[4] + b.y * wf[5] + b.z * wf[6] + b.w * wf[7];
                }
            }
        }
    } else {
        const u32* wr = (const u32*)(w + (size_t)j * k);
        for (int p = lane; p < (k >> 1); p += 32) {
            const u32 pair = wr[p];
            const float w0 = __uint_as_float(pair << 16), w1 = __uint_as_float(pair & 0xffff0000u);
#pragma unroll
            for (int r = 0; r < GEMV_MAX_M; ++r)
                if (r < m) acc[r] += x[(size_t)r * k + 2 * p] * w0 + x[(size_t)r * k + 2 * p + 1] * w1;
        }
    }
#pragma unroll
    for (int r = 0; r < GEMV_MAX_M; ++r) {
        if (r < m) {
            const float v = warp_sum(acc[r]);
            if (lane == 0) out[(size_t)r * n + j] = v;
        }
    }
}
