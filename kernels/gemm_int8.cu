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

// Tiled tensor-core kernel (sm_80+): block tile 64 (m) x 64 (n), 4 warps each owning 32 x 32 as
// 2 x 4 mma.m16n8k32 tiles, k steps of 32 staged through shared memory as 32-bit words.
// Grid (ceil(n / 64), ceil(m / 64)), 128 threads.
#define QT_M 64
#define QT_N 64

extern "C" __global__ void __launch_bounds__(128) gemm_w8a8(
    float* __restrict__ out, int* __restrict__ acc_out, const i8* __restrict__ qa,
    const i8* __restrict__ qw, const float* __restrict__ a_scale, const int* __restrict__ a_zp,
    const float* __restrict__ w_scale, const int* __restrict__ colsum,
    const float* __restrict__ bias, int m, int n, int k) {
    __shared__ u32 as[QT_M][MMA8_KW + 1];
    __shared__ u32 bs[QT_N][MMA8_KW + 1];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int m0 = blockIdx.y * QT_M, n0 = blockIdx.x * QT_N;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    int acc[2][4][4];
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[a][b][c] = 0;
    for (int kw0 = 0; kw0 < (k >> 2); kw0 += MMA8_KW) {
        stage_words<QT_M>(as, qa, m0, m, k, kw0);
        stage_words<QT_N>(bs, qw, n0, n, k, kw0);
        __syncthreads();
        u32 af[2][4], bf[4][2];
#pragma unroll
        for (int a = 0; a < 2; ++a) frag_a8(af[a], as, wm + a * 16, g, t);
#pragma unroll
        for (int b = 0; b < 4; ++b) frag_b8(bf[b], bs, wn + b * 8, g, t);
#pragma unroll
        for (int a = 0; a < 2; ++a)
#pragma unroll
            for (int b = 0; b < 4; ++b) mma_s8(acc[a][b], af[a], bf[b]);
        __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int i = m0 + wm + a * 16 + g + (c >> 1) * 8;
                const int j = n0 + wn + b * 8 + t * 2 + (c & 1);
                if (i < m && j < n)
                    epilogue(out, acc_out, i, j, n, acc[a][b][c], a_scale, a_zp, w_scale, colsum,
                             bias);
            }
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
