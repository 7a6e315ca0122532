// Fused Conv2d + (folded BatchNorm) bias + ReLU as one implicit-GEMM tensor-core kernel, the
// CUDA side of vision/conv.rs's FusedConv (seed 004: conv, bn and relu as one pass over the
// activation). Per group g: out (pixels, cout_g) = A (pixels, K) · W_g (cout_g, K)^T, where row
// p of A is output pixel p's receptive field in PyTorch's (ci, ky, kx) order, gathered from x
// (NCHW or NHWC) while it is staged into shared memory: the im2col matrix never exists.
//
// conv_int8: x quantized on the fly with the static per-tensor scale (round half even, clamp
// +-127, as quant::formats::quantize_i8), int8 weights (per-channel scales) on mma.m16n8k32
// s8, and the CPU's epilogue in its order without FMA contraction:
//   v = float(acc) * (act_scale * w_scale[c]) + bias[c], relu, then f32 or int8 requantized.
// The int32 sums equal the CPU's, so the outputs are bit-identical to FusedConv's INT8 path.
// conv_bf16: x rounded to bf16, bf16 weights, mma.m16n8k16 with f32 accumulation.
//
// Tiles as gemm_int8.cu: 64 pixels x 64 output channels per block, 4 warps of 2 x 4 mma tiles,
// k in steps of 8 words (32 int8 / 16 bf16). Weights are rows of Kp (K rounded up to 32, zero
// padded by the host) so every staged word is inside its row. Grid (ceil(cout_g / 64),
// ceil(n * oh * ow / 64), groups), 128 threads.
typedef signed char i8;

// Geometry of one convolution (mirrors ferroq::vision::cuda::ConvGeom, #[repr(C)]).
struct ConvGeom {
    int n, c, h, w;       // input
    int oc, oh, ow;       // output channels and size
    int kh, kw, sh, sw;   // kernel, stride
    int ph, pw, dh, dw;   // padding, dilation
    int groups, cin_g, cout_g;
    int K, Kp;            // cin_g * kh * kw, and rounded up to 32
    int nhwc;             // 1: (n, h, w, c), 0: (n, c, h, w)
};

__device__ __forceinline__ size_t act_index(const ConvGeom& g, int n, int c, int y, int x,
                                            int C, int H, int W) {
    return g.nhwc ? (((size_t)n * H + y) * W + x) * C + c : (((size_t)n * C + c) * H + y) * W + x;
}

// Input value for output pixel p (over all images), column kk of group gr; 0 outside.
__device__ __forceinline__ float gather(const float* x, const ConvGeom& g, int p, int kk,
                                        int gr) {
    const int pixels = g.oh * g.ow;
    if (p >= g.n * pixels || kk >= g.K) return 0.0f;
    const int n = p / pixels, r = p % pixels, oy = r / g.ow, ox = r % g.ow;
    const int taps = g.kh * g.kw, ci = kk / taps, t = kk % taps, ky = t / g.kw, kx = t % g.kw;
    const int iy = oy * g.sh - g.ph + ky * g.dh, ix = ox * g.sw - g.pw + kx * g.dw;
    if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) return 0.0f;
    return x[act_index(g, n, gr * g.cin_g + ci, iy, ix, g.c, g.h, g.w)];
}

__device__ __forceinline__ int quant_i8(float v, float inv) {
    return min(127, max(-127, __float2int_rn(v * inv)));
}

#define CV_M 64
#define CV_N 64

__device__ __forceinline__ void mma_step(int* c, const u32* a, const u32* b) { mma_s8(c, a, b); }
__device__ __forceinline__ void mma_step(float* c, const u32* a, const u32* b) {
    mma_bf16(c, a, b);
}

template <bool I8>
struct AccOf {
    typedef float T;
};
template <>
struct AccOf<true> {
    typedef int T;
};

// I8: the int8 kernel (int32 accumulators); else the bf16 one (f32 accumulators).
template <bool I8>
__device__ __forceinline__ void conv_body(float* __restrict__ out_f, i8* __restrict__ out_q,
                                          const float* __restrict__ x,
                                          const void* __restrict__ wt,
                                          const float* __restrict__ w_scale,
                                          const float* __restrict__ bias, ConvGeom g,
                                          float in_inv, float act_scale, float out_inv,
                                          int relu) {
    typedef typename AccOf<I8>::T ACC;
    constexpr int PER_WORD = I8 ? 4 : 2;
    __shared__ u32 as[CV_M][MMA8_KW + 1];
    __shared__ u32 bs[CV_N][MMA8_KW + 1];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int fg = lane >> 2, ft = lane & 3;
    const int gr = blockIdx.z, p0 = blockIdx.y * CV_M, n0 = blockIdx.x * CV_N;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    const int row_bytes = g.Kp * (I8 ? 1 : 2);
    const unsigned char* wg = (const unsigned char*)wt + (size_t)gr * g.cout_g * row_bytes;
    ACC acc[2][4][4];
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[a][b][c] = 0;
    for (int kw0 = 0; kw0 < g.Kp / PER_WORD; kw0 += MMA8_KW) {
        for (int e = tid; e < CV_M * MMA8_KW; e += blockDim.x) {
            const int r = e / MMA8_KW, cw = e % MMA8_KW, kk = (kw0 + cw) * PER_WORD;
            u32 word = 0;
#pragma unroll
            for (int q = 0; q < PER_WORD; ++q) {
                const float v = gather(x, g, p0 + r, kk + q, gr);
                if constexpr (I8)
                    word |= ((u32)quant_i8(v, in_inv) & 0xffu) << (8 * q);
                else
                    word |= (u32)f32_to_bf16(v) << (16 * q);
            }
            as[r][cw] = word;
        }
        stage_words<CV_N>(bs, wg, n0, g.cout_g, row_bytes, kw0);
        __syncthreads();
        u32 af[2][4], bf[4][2];
#pragma unroll
        for (int a = 0; a < 2; ++a) frag_a8(af[a], as, wm + a * 16, fg, ft);
#pragma unroll
        for (int b = 0; b < 4; ++b) frag_b8(bf[b], bs, wn + b * 8, fg, ft);
#pragma unroll
        for (int a = 0; a < 2; ++a)
#pragma unroll
            for (int b = 0; b < 4; ++b) mma_step(acc[a][b], af[a], bf[b]);
        __syncthreads();
    }
    const int pixels = g.oh * g.ow;
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int p = p0 + wm + a * 16 + fg + (c >> 1) * 8;
                const int j = n0 + wn + b * 8 + ft * 2 + (c & 1);
                if (p >= g.n * pixels || j >= g.cout_g) continue;
                const int ch = gr * g.cout_g + j;
                float v = (float)acc[a][b][c];
                if constexpr (I8) v = __fmul_rn(v, __fmul_rn(act_scale, w_scale[ch]));
                v = __fadd_rn(v, bias[ch]);
                if (relu) v = fmaxf(v, 0.0f);
                const int n = p / pixels, r = p % pixels;
                const size_t o = act_index(g, n, ch, r / g.ow, r % g.ow, g.oc, g.oh, g.ow);
                if (out_q)
                    out_q[o] = (i8)quant_i8(v, out_inv);
                else
                    out_f[o] = v;
            }
}

// out_q null: f32 output into out_f; else int8 output requantized with 1 / out_inv's scale.
// in_inv = 1 / the static activation scale, act_scale the scale itself (as the CPU keeps both).
extern "C" __global__ void __launch_bounds__(128) conv_int8(
    float* __restrict__ out_f, i8* __restrict__ out_q, const float* __restrict__ x,
    const i8* __restrict__ wq, const float* __restrict__ w_scale, const float* __restrict__ bias,
    ConvGeom g, float in_inv, float act_scale, float out_inv, int relu) {
    conv_body<true>(out_f, out_q, x, wq, w_scale, bias, g, in_inv, act_scale, out_inv, relu);
}

extern "C" __global__ void __launch_bounds__(128) conv_bf16(
    float* __restrict__ out_f, i8* __restrict__ out_q, const float* __restrict__ x,
    const bf16_t* __restrict__ wb, const float* __restrict__ bias, ConvGeom g, float out_inv,
    int relu) {
    conv_body<false>(out_f, out_q, x, wb, nullptr, bias, g, 0.0f, 0.0f, out_inv, relu);
}

// The unfused sequence's second and third kernels, for the benchmark against the fused op:
// y = y * scale[c] + shift[c] (BatchNorm in eval mode), then y = max(y, 0). `inner` is the
// number of consecutive elements sharing a channel (h * w for NCHW, 1 for NHWC) and `channels`
// the channel count. Grid-stride loops, 256 threads.
extern "C" __global__ void channel_affine(float* __restrict__ y, const float* __restrict__ scale,
                                          const float* __restrict__ shift, long long len,
                                          int channels, int inner) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        const int c = (int)((i / inner) % channels);
        y[i] = fmaf(y[i], scale[c], shift[c]);
    }
}

extern "C" __global__ void relu_inplace(float* __restrict__ y, long long len) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x)
        y[i] = fmaxf(y[i], 0.0f);
}
