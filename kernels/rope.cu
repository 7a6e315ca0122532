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
