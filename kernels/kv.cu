// Paged KV write: cache (n_blocks * block_size, kv_dim) row slots[r] = src (rows, kv_dim) row r
// rounded to bf16 (nearest even): the cache is bf16, half the bytes attention reads per key.
// The host turns each sequence's positions and block table into slots. One block per row.
extern "C" __global__ void write_kv(bf16_t* __restrict__ cache, const float* __restrict__ src,
                                    const u32* __restrict__ slots, int kv_dim) {
    bf16_t* dst = cache + (size_t)slots[blockIdx.x] * kv_dim;
    const float* s = src + (size_t)blockIdx.x * kv_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) dst[i] = f32_to_bf16(s[i]);
}
