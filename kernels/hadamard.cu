// The online Hadamard rotation (model/hadamard.rs): x (len) <- blockdiag(H_b) x with the
// Sylvester Hadamard scaled by 1/sqrt(b), b a power of two <= 4096. One thread block per
// Hadamard block, staged in dynamic shared memory (b floats); the butterflies (u + v, u - v)
// and the final scaling are the CPU's, in the same order, so the result is bit-identical.
extern "C" __global__ void fwht_blocks(float* __restrict__ x, int block) {
    extern __shared__ float s[];
    float* xb = x + (size_t)blockIdx.x * block;
    for (int i = threadIdx.x; i < block; i += blockDim.x) s[i] = xb[i];
    __syncthreads();
    for (int h = 1; h < block; h <<= 1) {
        for (int t = threadIdx.x; t < (block >> 1); t += blockDim.x) {
            const int i = (t / h) * 2 * h + (t % h);
            const float u = s[i], v = s[i + h];
            s[i] = u + v;
            s[i + h] = u - v;
        }
        __syncthreads();
    }
    const float norm = __fdiv_rn(1.0f, __fsqrt_rn((float)block));
    for (int i = threadIdx.x; i < block; i += blockDim.x) xb[i] = __fmul_rn(s[i], norm);
}
