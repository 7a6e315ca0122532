// The online Hadamard rotation (src/quant/hadamard.rs) on its own: x (len) <- blockdiag(H_b) x,
// b a power of two <= 4096. One thread block per Hadamard block, staged in dynamic shared
// memory (b floats) and rotated by common.cuh's fwht_row, so the result is bit-identical to
// the CPU's.
extern "C" __global__ void fwht_blocks(float* __restrict__ x, int block) {
    extern __shared__ float s[];
    float* xb = x + (size_t)blockIdx.x * block;
    for (int i = threadIdx.x; i < block; i += blockDim.x) s[i] = xb[i];
    __syncthreads();
    fwht_row(s, block, block);
    for (int i = threadIdx.x; i < block; i += blockDim.x) xb[i] = s[i];
}
