// RoPE, HF rotate_half convention, in place. x (rows, n_heads, head_dim); pos (rows) is each
// row's position; cos, sin (max_pos, head_dim / 2). One block per row, threads over
// (head, i < head_dim / 2).
extern "C" __global__ void rope(float* __restrict__ x, const float* __restrict__ cos_t,
                                const float* __restrict__ sin_t, const u32* __restrict__ pos,
                                int n_heads, int head_dim) {
    const int half = head_dim >> 1;
    const u32 p = pos[blockIdx.x];
    float* row = x + (size_t)blockIdx.x * n_heads * head_dim;
    for (int t = threadIdx.x; t < n_heads * half; t += blockDim.x) {
        const int h = t / half, i = t % half;
        float* hd = row + h * head_dim;
        const float c = cos_t[(size_t)p * half + i], s = sin_t[(size_t)p * half + i];
        const float x0 = hd[i], x1 = hd[i + half];
        hd[i] = x0 * c - x1 * s;
        hd[i + half] = x1 * c + x0 * s;
    }
}

// The attention block's steps between the projections and attention in one launch: RoPE on q
// (rows, n_heads, head_dim) and k (rows, n_kv_heads, head_dim) in place, then k and v (rows,
// n_kv_heads * head_dim) rounded into the bf16 caches at slots[row] (kv.cu's write_kv). The
// thread that rotates a k pair stores it, so no barrier is needed. One block per row.
extern "C" __global__ void rope_write_kv(float* __restrict__ q, float* __restrict__ k,
                                         const float* __restrict__ v,
                                         bf16_t* __restrict__ k_cache,
                                         bf16_t* __restrict__ v_cache,
                                         const float* __restrict__ cos_t,
                                         const float* __restrict__ sin_t,
                                         const u32* __restrict__ pos,
                                         const u32* __restrict__ slots, int n_heads,
                                         int n_kv_heads, int head_dim) {
    const int half = head_dim >> 1, kvd = n_kv_heads * head_dim;
    const u32 p = pos[blockIdx.x];
    const float* c_row = cos_t + (size_t)p * half;
    const float* s_row = sin_t + (size_t)p * half;
    float* qr = q + (size_t)blockIdx.x * n_heads * head_dim;
    for (int t = threadIdx.x; t < n_heads * half; t += blockDim.x) {
        float* hd = qr + (t / half) * head_dim;
        const int i = t % half;
        const float c = c_row[i], s = s_row[i], x0 = hd[i], x1 = hd[i + half];
        hd[i] = x0 * c - x1 * s;
        hd[i + half] = x1 * c + x0 * s;
    }
    float* kr = k + (size_t)blockIdx.x * kvd;
    bf16_t* kc = k_cache + (size_t)slots[blockIdx.x] * kvd;
    for (int t = threadIdx.x; t < n_kv_heads * half; t += blockDim.x) {
        const int off = (t / half) * head_dim, i = t % half;
        const float c = c_row[i], s = s_row[i], x0 = kr[off + i], x1 = kr[off + i + half];
        const float y0 = x0 * c - x1 * s, y1 = x1 * c + x0 * s;
        kr[off + i] = y0;
        kr[off + i + half] = y1;
        kc[off + i] = f32_to_bf16(y0);
        kc[off + i + half] = f32_to_bf16(y1);
    }
    const float* vr = v + (size_t)blockIdx.x * kvd;
    bf16_t* vc = v_cache + (size_t)slots[blockIdx.x] * kvd;
    for (int i = threadIdx.x; i < kvd; i += blockDim.x) vc[i] = f32_to_bf16(vr[i]);
}
