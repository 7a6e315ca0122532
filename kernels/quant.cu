// Activation quantization, alone (a linear's input) or fused into the op that produces the
// activation: RMSNorm (optionally after the residual add) then int8 or E4M3, whose normalized
// row is never stored, and SiLU(gate) * up then int8 or E4M3. Per row either dynamic (the row's range, the
// CPU's quant::dynamic_i8_params: symmetric absmax / 127, or asymmetric (hi - lo) / 255 with
// zp = round(-128 - lo / s), 0 always inside the range) or static (given scale and zero point,
// the decode side of pd_mix). Rounding is half-to-even (rintf) without FMA contraction, as the
// CPU reference (quant::quantize_rows_i8). One block per row.
typedef signed char i8;

// Quantize one row of `dim` values, value(i) computing element i (it is evaluated twice: once
// for the range, once to quantize, so the float row is never stored); thread 0 stores the
// row's (scale, zp).
template <typename F>
__device__ void quantize_row(i8* q, float* scale_out, int* zp_out, F value, int dim,
                             int symmetric, float static_scale, int static_zp, float* sh) {
    float s;
    int z;
    if (static_scale > 0.0f) {
        s = static_scale;
        z = static_zp;
    } else {
        float lo = 0.0f, hi = 0.0f;
        for (int i = threadIdx.x; i < dim; i += blockDim.x) {
            const float v = value(i);
            lo = fminf(lo, v);
            hi = fmaxf(hi, v);
        }
        lo = -block_max(-lo, sh);
        hi = block_max(hi, sh);
        if (symmetric) {
            const float a = fmaxf(-lo, hi);
            s = a > 0.0f ? __fdiv_rn(a, 127.0f) : 1.0f;
            z = 0;
        } else {
            s = __fdiv_rn(__fsub_rn(hi, lo), 255.0f);
            if (s <= 0.0f) {
                s = 1.0f;
                z = 0;
            } else {
                z = (int)fminf(fmaxf(rintf(__fsub_rn(-128.0f, __fdiv_rn(lo, s))), -128.0f), 127.0f);
            }
        }
    }
    const float inv = s > 0.0f ? __fdiv_rn(1.0f, s) : 0.0f;
    const float qmin = symmetric ? -127.0f : -128.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        q[i] = (i8)fminf(fmaxf(__fadd_rn(rintf(__fmul_rn(value(i), inv)), (float)z), qmin), 127.0f);
    if (threadIdx.x == 0) {
        *scale_out = s;
        *zp_out = z;
    }
}

// int8 of x (rows, dim): a linear's input, per token (dynamic) or per tensor (static).
extern "C" __global__ void quant_rows_i8(i8* __restrict__ q, float* __restrict__ scale,
                                         int* __restrict__ zp, const float* __restrict__ x,
                                         int dim, int symmetric, float static_scale,
                                         int static_zp) {
    __shared__ float sh[32];
    const float* xr = x + (size_t)blockIdx.x * dim;
    quantize_row(q + (size_t)blockIdx.x * dim, scale + blockIdx.x, zp + blockIdx.x,
                 [=](int i) { return xr[i]; }, dim, symmetric, static_scale, static_zp, sh);
}

// Row blockIdx.x of x (rows, dim) [+= y when y is not null, written back]; returns
// 1 / rms(x) for rms_norm(x) * w.
__device__ __forceinline__ float residual_rms(float* xr, const float* __restrict__ y, int dim,
                                              float eps, float* sh) {
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = xr[i];
        if (y) {
            v += y[(size_t)blockIdx.x * dim + i];
            xr[i] = v;
        }
        ss += v * v;
    }
    return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(block_sum(ss, sh), (float)dim), eps)));
}

// gr = silu(gr) * ur in place (one row), visible to the whole block afterwards.
__device__ __forceinline__ void silu_mul_row(float* gr, const float* ur, int dim) {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float g = gr[i];
        gr[i] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), ur[i]);
    }
    __syncthreads();
}

// x (rows, dim) [+= y when y is not null], then int8 of rms_norm(x) * w.
extern "C" __global__ void rms_norm_quant_i8(i8* __restrict__ q, float* __restrict__ scale,
                                             int* __restrict__ zp, float* __restrict__ x,
                                             const float* __restrict__ y,
                                             const float* __restrict__ w, int dim, float eps,
                                             int symmetric, float static_scale, int static_zp) {
    __shared__ float sh[32];
    float* xr = x + (size_t)blockIdx.x * dim;
    const float r = residual_rms(xr, y, dim, eps, sh);
    quantize_row(q + (size_t)blockIdx.x * dim, scale + blockIdx.x, zp + blockIdx.x,
                 [=](int i) { return __fmul_rn(__fmul_rn(xr[i], r), w[i]); }, dim, symmetric,
                 static_scale, static_zp, sh);
}

// gate (rows, dim) = silu(gate) * up, then its int8 (the input of down_proj).
extern "C" __global__ void silu_mul_quant_i8(i8* __restrict__ q, float* __restrict__ scale,
                                             int* __restrict__ zp, float* __restrict__ gate,
                                             const float* __restrict__ up, int dim, int symmetric,
                                             float static_scale, int static_zp) {
    __shared__ float sh[32];
    float* gr = gate + (size_t)blockIdx.x * dim;
    silu_mul_row(gr, up + (size_t)blockIdx.x * dim, dim);
    quantize_row(q + (size_t)blockIdx.x * dim, scale + blockIdx.x, zp + blockIdx.x,
                 [=](int i) { return gr[i]; }, dim, symmetric, static_scale, static_zp, sh);
}

// E4M3 of one row of `dim` values (dim even): scale = absmax / 448 (dynamic) or static_scale
// when > 0, codes by round-to-nearest-even with saturation (cvt.rn.satfinite, the CPU's
// Fp8::encode); thread 0 stores the scale. value(i) is evaluated twice, as in quantize_row.
// sm_89+ (a trap below, where the host never launches it).
template <typename F>
__device__ void quantize_row_fp8(unsigned char* q, float* scale_out, F value, int dim,
                                 float static_scale, float* sh) {
    float s = static_scale;
    if (!(s > 0.0f)) {
        float a = 0.0f;
        for (int i = threadIdx.x; i < dim; i += blockDim.x) a = fmaxf(a, fabsf(value(i)));
        a = block_max(a, sh);
        s = a > 0.0f ? __fdiv_rn(a, 448.0f) : 1.0f;
    }
    const float inv = __fdiv_rn(1.0f, s);
    unsigned short* q2 = (unsigned short*)q;
    for (int p = threadIdx.x; p < (dim >> 1); p += blockDim.x) {
        const float lo = __fmul_rn(value(2 * p), inv), hi = __fmul_rn(value(2 * p + 1), inv);
        unsigned short d = 0;
#if __CUDA_ARCH__ >= 890
        asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(d) : "f"(hi), "f"(lo));
#else
        asm volatile("trap;");
#endif
        q2[p] = d;
    }
    if (threadIdx.x == 0) *scale_out = s;
}

// Per-token dynamic (or static, when static_scale > 0) E4M3 of x (rows, dim), dim even.
extern "C" __global__ void quant_rows_fp8(unsigned char* __restrict__ q, float* __restrict__ scale,
                                          const float* __restrict__ x, int dim,
                                          float static_scale) {
    __shared__ float sh[32];
    const float* xr = x + (size_t)blockIdx.x * dim;
    quantize_row_fp8(q + (size_t)blockIdx.x * dim, scale + blockIdx.x,
                     [=](int i) { return xr[i]; }, dim, static_scale, sh);
}

// x (rows, dim) [+= y when y is not null], then E4M3 of rms_norm(x) * w (dim even).
extern "C" __global__ void rms_norm_quant_fp8(unsigned char* __restrict__ q,
                                              float* __restrict__ scale, float* __restrict__ x,
                                              const float* __restrict__ y,
                                              const float* __restrict__ w, int dim, float eps,
                                              float static_scale) {
    __shared__ float sh[32];
    float* xr = x + (size_t)blockIdx.x * dim;
    const float r = residual_rms(xr, y, dim, eps, sh);
    quantize_row_fp8(q + (size_t)blockIdx.x * dim, scale + blockIdx.x,
                     [=](int i) { return __fmul_rn(__fmul_rn(xr[i], r), w[i]); }, dim,
                     static_scale, sh);
}

// gate (rows, dim) = silu(gate) * up, then its E4M3 (dim even).
extern "C" __global__ void silu_mul_quant_fp8(unsigned char* __restrict__ q,
                                              float* __restrict__ scale, float* __restrict__ gate,
                                              const float* __restrict__ up, int dim,
                                              float static_scale) {
    __shared__ float sh[32];
    float* gr = gate + (size_t)blockIdx.x * dim;
    silu_mul_row(gr, up + (size_t)blockIdx.x * dim, dim);
    quantize_row_fp8(q + (size_t)blockIdx.x * dim, scale + blockIdx.x,
                     [=](int i) { return gr[i]; }, dim, static_scale, sh);
}

// The row the rotating quantizers start from, into shared memory s (dim floats): mode 0 x as
// it is, 1 rms_norm(x [+= y, written back]) * w, 2 silu(x) * y (x = gate, written back, y = up).
__device__ __forceinline__ void source_row(float* s, float* x, const float* __restrict__ y,
                                           const float* __restrict__ w, int mode, int dim,
                                           float eps, float* sh) {
    float* xr = x + (size_t)blockIdx.x * dim;
    if (mode == 1) {
        const float r = residual_rms(xr, y, dim, eps, sh);
        for (int i = threadIdx.x; i < dim; i += blockDim.x)
            s[i] = __fmul_rn(__fmul_rn(xr[i], r), w[i]);
    } else if (mode == 2) {
        silu_mul_row(xr, y + (size_t)blockIdx.x * dim, dim);
        for (int i = threadIdx.x; i < dim; i += blockDim.x) s[i] = xr[i];
    } else {
        for (int i = threadIdx.x; i < dim; i += blockDim.x) s[i] = xr[i];
    }
    __syncthreads();
}

// The QuaRot online rotation fused between a linear input's producer and its int8
// quantization: source_row (mode), fwht_row, then quantize_row from shared memory; the rotated
// float row is never stored. One block per row, dim floats of dynamic shared memory.
extern "C" __global__ void rotate_quant_i8(i8* __restrict__ q, float* __restrict__ scale,
                                           int* __restrict__ zp, float* __restrict__ x,
                                           const float* __restrict__ y,
                                           const float* __restrict__ w, int mode, int dim,
                                           int block, float eps, int symmetric,
                                           float static_scale, int static_zp) {
    extern __shared__ float s[];
    __shared__ float sh[32];
    source_row(s, x, y, w, mode, dim, eps, sh);
    fwht_row(s, dim, block);
    quantize_row(q + (size_t)blockIdx.x * dim, scale + blockIdx.x, zp + blockIdx.x,
                 [=](int i) { return s[i]; }, dim, symmetric, static_scale, static_zp, sh);
}

// As rotate_quant_i8, to E4M3 (dim even).
extern "C" __global__ void rotate_quant_fp8(unsigned char* __restrict__ q,
                                            float* __restrict__ scale, float* __restrict__ x,
                                            const float* __restrict__ y,
                                            const float* __restrict__ w, int mode, int dim,
                                            int block, float eps, float static_scale) {
    extern __shared__ float s[];
    __shared__ float sh[32];
    source_row(s, x, y, w, mode, dim, eps, sh);
    fwht_row(s, dim, block);
    quantize_row_fp8(q + (size_t)blockIdx.x * dim, scale + blockIdx.x,
                     [=](int i) { return s[i]; }, dim, static_scale, sh);
}
