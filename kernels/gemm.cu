// Dense GEMMs with bf16 weights and f32 activations / accumulation: the fallback where cuBLAS
// is absent (and the reference the cuBLAS path is tested against).
//
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
// one warp per output column streams its weight row once as bf16 pairs (k even, so every row
// starts 4-byte aligned; the host uses gemm_bf16 otherwise) for all m rows. 256 threads, grid
// ceil(n / 8).
#define GEMV_MAX_M 8

extern "C" __global__ void __launch_bounds__(256) gemv_bf16(
    float* __restrict__ out, const float* __restrict__ x, const bf16_t* __restrict__ w, int m,
    int n, int k) {
    const int j = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (j >= n) return;
    const u32* wr = (const u32*)(w + (size_t)j * k);
    float acc[GEMV_MAX_M];
#pragma unroll
    for (int r = 0; r < GEMV_MAX_M; ++r) acc[r] = 0.0f;
    for (int p = lane; p < (k >> 1); p += 32) {
        const u32 pair = wr[p];
        const float w0 = __uint_as_float(pair << 16), w1 = __uint_as_float(pair & 0xffff0000u);
#pragma unroll
        for (int r = 0; r < GEMV_MAX_M; ++r)
            if (r < m) acc[r] += x[(size_t)r * k + 2 * p] * w0 + x[(size_t)r * k + 2 * p + 1] * w1;
    }
#pragma unroll
    for (int r = 0; r < GEMV_MAX_M; ++r) {
        if (r < m) {
            const float v = warp_sum(acc[r]);
            if (lane == 0) out[(size_t)r * n + j] = v;
        }
    }
}
