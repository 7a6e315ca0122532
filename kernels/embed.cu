// Embedding lookup from a bf16 table: out (rows, dim) = table[ids[row]] (vocab, dim). Ids are
// range-checked on the host. One block per row.
extern "C" __global__ void embed_bf16(float* __restrict__ out, const bf16_t* __restrict__ table,
                                      const u32* __restrict__ ids, int dim) {
    const bf16_t* src = table + (size_t)ids[blockIdx.x] * dim;
    float* dst = out + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = bf16_to_f32(src[i]);
}
