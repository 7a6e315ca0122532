// Dense GEMMs with bf16 weights and f32 activations / accumulation: the fallback where cuBLAS
// is absent (and the reference the cuBLAS path is tested against).
//
// gemm_bf16: out (m, n) = x (m, k) . w (n, k)^T. Block tiles of 64 x 64 outputs, 256 threads
// each computing 4 x 4, k in steps of 16 through shared memory; every edge guarded, so any
// m, n, k. Grid (ceil(n / 64), ceil(m / 64)).
#define TM 64
#define TN 64
#define TK 16

extern "C" __global__ void __launch_bounds__(256) gemm_bf16(
    float* __restrict__ out, const float* __restrict__ x, const bf16_t* __restrict__ w, int m,
    int n, int k) {
    __shared__ float xs[TK][TM + 1];
    __shared__ float ws[TK][TN + 1];
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int m0 = blockIdx.y * TM, n0 = blockIdx.x * TN;
    float acc[4][4];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[r][c] = 0.0f;
    for (int k0 = 0; k0 < k; k0 += TK) {
        for (int e = tid; e < TM * TK; e += 256) {
            const int i = e / TK, kk = e % TK, gi = m0 + i, gk = k0 + kk;
            xs[kk][i] = (gi < m && gk < k) ? x[(size_t)gi * k + gk] : 0.0f;
        }
        for (int e = tid; e < TN * TK; e += 256) {
            const int j = e / TK, kk = e % TK, gj = n0 + j, gk = k0 + kk;
            ws[kk][j] = (gj < n && gk < k) ? bf16_to_f32(w[(size_t)gj * k + gk]) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TK; ++kk) {
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
            if (gi < m && gj < n) out[(size_t)gi * n + gj] = acc[r][c];
        }
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
