// Activation quantization fused into the op that produces the activation, so the float row
// never goes back to memory before the int8 GEMM: RMSNorm (optionally after the residual add)
// then int8, and SiLU(gate) * up then int8. Per row either dynamic (the row's range, the
// CPU's quant::dynamic_i8_params: symmetric absmax / 127, or asymmetric (hi - lo) / 255 with
// zp = round(-128 - lo / s), 0 always inside the range) or static (given scale and zero point,
// the decode side of pd_mix). Rounding is half-to-even (rintf) without FMA contraction, as the
// CPU reference (quant::quantize_rows_i8). One block per row; dynamic shared memory holds the
// row (dim floats).
typedef signed char i8;

// Quantize the block's row `v` (shared) to q; thread 0 stores the row's (scale, zp).
__device__ void quantize_row(i8* q, float* scale_out, int* zp_out, const float* v, int dim,
                             int symmetric, float static_scale, int static_zp, float* sh) {
    float lo = 0.0f, hi = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        lo = fminf(lo, v[i]);
        hi = fmaxf(hi, v[i]);
    }
    lo = -block_max(-lo, sh);
    hi = block_max(hi, sh);
    float s;
    int z;
    if (static_scale > 0.0f) {
        s = static_scale;
        z = static_zp;
    } else if (symmetric) {
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
    const float inv = s > 0.0f ? __fdiv_rn(1.0f, s) : 0.0f;
    const float qmin = symmetric ? -127.0f : -128.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        q[i] = (i8)fminf(fmaxf(__fadd_rn(rintf(__fmul_rn(v[i], inv)), (float)z), qmin), 127.0f);
    if (threadIdx.x == 0) {
        *scale_out = s;
        *zp_out = z;
    }
}

// x (rows, dim) [+= y when y is not null], then int8 of rms_norm(x) * w.
extern "C" __global__ void rms_norm_quant_i8(i8* __restrict__ q, float* __restrict__ scale,
                                             int* __restrict__ zp, float* __restrict__ x,
                                             const float* __restrict__ y,
                                             const float* __restrict__ w, int dim, float eps,
                                             int symmetric, float static_scale, int static_zp) {
    extern __shared__ float row[];
    __shared__ float sh[32];
    float* xr = x + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = xr[i];
        if (y) {
            v += y[(size_t)blockIdx.x * dim + i];
            xr[i] = v;
        }
        row[i] = v;
        ss += v * v;
    }
    const float r = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(block_sum(ss, sh), (float)dim), eps)));
    for (int i = threadIdx.x; i < dim; i += blockDim.x) row[i] = __fmul_rn(__fmul_rn(row[i], r), w[i]);
    __syncthreads();
    quantize_row(q + (size_t)blockIdx.x * dim, scale + blockIdx.x, zp + blockIdx.x, row, dim,
                 symmetric, static_scale, static_zp, sh);
}

// int8 of silu(gate) * up, rows of dim (the input of down_proj).
extern "C" __global__ void silu_mul_quant_i8(i8* __restrict__ q, float* __restrict__ scale,
                                             int* __restrict__ zp, const float* __restrict__ gate,
                                             const float* __restrict__ up, int dim, int symmetric,
                                             float static_scale, int static_zp) {
    extern __shared__ float row[];
    __shared__ float sh[32];
    const size_t base = (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float g = gate[base + i];
        row[i] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), up[base + i]);
    }
    __syncthreads();
    quantize_row(q + base, scale + blockIdx.x, zp + blockIdx.x, row, dim, symmetric,
                 static_scale, static_zp, sh);
}
