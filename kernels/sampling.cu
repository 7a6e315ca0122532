// (value, index) maximum across the warp, ties to the lower index; every lane gets it.
__device__ __forceinline__ void warp_argmax(float& best, u32& bi) {
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const u32 oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > best || (ov == best && oi < bi)) {
            best = ov;
            bi = oi;
        }
    }
}

// Greedy sampling on the device: out[row] = argmax of logits (rows, vocab), ties to the lowest
// index (the CPU sampler's rule), so only the token id crosses to the host. One block per row.
extern "C" __global__ void argmax_rows(u32* __restrict__ out, const float* __restrict__ logits,
                                       int vocab) {
    __shared__ float sv[32];
    __shared__ u32 si[32];
    const float* row = logits + (size_t)blockIdx.x * vocab;
    float best = NEG_INF;
    u32 bi = 0xffffffffu;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = row[i];
        if (v > best) {
            best = v;
            bi = (u32)i;
        }
    }
    warp_argmax(best, bi);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        sv[warp] = best;
        si[warp] = bi;
    }
    __syncthreads();
    if (warp == 0) {
        const int nw = blockDim.x >> 5;
        best = lane < nw ? sv[lane] : NEG_INF;
        bi = lane < nw ? si[lane] : 0xffffffffu;
        warp_argmax(best, bi);
        if (lane == 0) out[blockIdx.x] = bi;
    }
}
