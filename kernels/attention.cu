// Causal grouped-query attention over the paged KV cache, split along the keys
// (flash-decoding): every query row is independent, so one pair of kernels serves prefill
// rows and decode rows alike.
//
// attn_partial: grid (rows * n_heads, splits), 128 threads. Row r attends to keys
// 0 .. n_keys[r] - 1 of its sequence, whose block table is tables + seq_of[r] * max_blocks
// (position p lives in cache slot table[p / block_size] * block_size + p % block_size). Split s
// takes keys [s * split_len, min(n_keys, (s + 1) * split_len)): one warp per key for Q.K,
// softmax numerators in shared memory, then threads over head dims for P.V. It writes the
// unnormalised partial output, its max m and its sum l to part (rows, n_heads, splits,
// head_dim + 2); an empty split writes (0, -inf, 0).
#define ATTN_MAX_SPLIT 256
#define ATTN_MAX_HD 256

__device__ __forceinline__ size_t kv_slot(const u32* table, int p, int block_size) {
    return (size_t)table[p / block_size] * block_size + p % block_size;
}

extern "C" __global__ void attn_partial(
    float* __restrict__ part, const float* __restrict__ q, const float* __restrict__ k_cache,
    const float* __restrict__ v_cache, const u32* __restrict__ tables,
    const u32* __restrict__ seq_of, const u32* __restrict__ n_keys, int max_blocks,
    int block_size, int n_heads, int n_kv_heads, int head_dim, int split_len, int splits,
    float scale) {
    __shared__ float qs[ATTN_MAX_HD];
    __shared__ float sc[ATTN_MAX_SPLIT];
    __shared__ float sh[32];
    const int row = blockIdx.x / n_heads, h = blockIdx.x % n_heads, split = blockIdx.y;
    const int g = h / (n_heads / n_kv_heads), kvd = n_kv_heads * head_dim;
    const int nk = (int)n_keys[row];
    const int j0 = split * split_len, j1 = min(nk, j0 + split_len);
    float* out = part + (((size_t)row * n_heads + h) * splits + split) * (head_dim + 2);
    if (j0 >= j1) {
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) out[i] = 0.0f;
        if (threadIdx.x == 0) {
            out[head_dim] = NEG_INF;
            out[head_dim + 1] = 0.0f;
        }
        return;
    }
    const float* qr = q + ((size_t)row * n_heads + h) * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) qs[i] = qr[i];
    __syncthreads();
    const u32* table = tables + (size_t)seq_of[row] * max_blocks;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    for (int j = j0 + warp; j < j1; j += nwarps) {
        const float* kr = k_cache + kv_slot(table, j, block_size) * kvd + g * head_dim;
        float d = 0.0f;
        for (int i = lane; i < head_dim; i += 32) d += qs[i] * kr[i];
        d = warp_sum(d);
        if (lane == 0) sc[j - j0] = d * scale;
    }
    __syncthreads();
    float m = NEG_INF;
    for (int t = threadIdx.x; t < j1 - j0; t += blockDim.x) m = fmaxf(m, sc[t]);
    m = block_max(m, sh);
    float l = 0.0f;
    for (int t = threadIdx.x; t < j1 - j0; t += blockDim.x) {
        const float e = expf(sc[t] - m);
        sc[t] = e;
        l += e;
    }
    l = block_sum(l, sh); // its barriers also publish sc
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float acc = 0.0f;
        for (int j = j0; j < j1; ++j)
            acc += sc[j - j0] * v_cache[kv_slot(table, j, block_size) * kvd + g * head_dim + i];
        out[i] = acc;
    }
    if (threadIdx.x == 0) {
        out[head_dim] = m;
        out[head_dim + 1] = l;
    }
}

// attn_combine: grid rows * n_heads, threads over head dims. out (rows, n_heads * head_dim) =
// sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M), M = max_s m_s (split 0 is never empty).
extern "C" __global__ void attn_combine(float* __restrict__ out, const float* __restrict__ part,
                                        int head_dim, int splits) {
    const float* p = part + (size_t)blockIdx.x * splits * (head_dim + 2);
    float M = NEG_INF;
    for (int s = 0; s < splits; ++s) M = fmaxf(M, p[s * (head_dim + 2) + head_dim]);
    float L = 0.0f;
    for (int s = 0; s < splits; ++s)
        L += p[s * (head_dim + 2) + head_dim + 1] * expf(p[s * (head_dim + 2) + head_dim] - M);
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float a = 0.0f;
        for (int s = 0; s < splits; ++s)
            a += p[s * (head_dim + 2) + i] * expf(p[s * (head_dim + 2) + head_dim] - M);
        out[(size_t)blockIdx.x * head_dim + i] = a / L;
    }
}
