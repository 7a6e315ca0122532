// Causal grouped-query attention over the paged KV cache. Two paths, chosen per sequence by the
// host so a sequence's result never depends on its batch-mates: decode rows (one per sequence)
// go through the key-split flash-decoding pair attn_partial / attn_combine in f32; prefill
// chunks through attn_prefill_hd{64,128}, a FlashAttention-2-style tensor-core kernel. The
// cache holds bf16 keys and values (kv.cu's write_kv rounds them); scores and sums are f32.
//
// attn_partial: grid (selected rows * n_heads, splits), 128 threads. Selected row i is batch
// row r = row_ids[i]; it attends to keys
// 0 .. n_keys[r] - 1 of its sequence, whose block table is tables + seq_of[r] * max_blocks
// (position p lives in cache slot table[p / block_size] * block_size + p % block_size). With a
// sliding window (window > 0) it sees keys lo = max(0, n_keys[r] - window) .. n_keys[r] - 1.
// Scores are q.k * scale, soft-capped to softcap * tanh(score / softcap) when softcap > 0
// (Gemma 2). Split s takes keys [lo + s * split_len, min(n_keys, lo + (s + 1) * split_len)): one warp per
// key for Q.K,
// softmax numerators in shared memory, then threads over head dims for P.V. It writes the
// unnormalised partial output, its max m and its sum l to part (rows, n_heads, splits,
// head_dim + 2), indexed by the selected row; an empty split writes (0, -inf, 0).
#define ATTN_MAX_SPLIT 256
#define ATTN_MAX_HD 256

__device__ __forceinline__ size_t kv_slot(const u32* table, int p, int block_size) {
    return (size_t)table[p / block_size] * block_size + p % block_size;
}

extern "C" __global__ void attn_partial(
    float* __restrict__ part, const float* __restrict__ q, const bf16_t* __restrict__ k_cache,
    const bf16_t* __restrict__ v_cache, const u32* __restrict__ tables,
    const u32* __restrict__ row_ids, const u32* __restrict__ seq_of,
    const u32* __restrict__ n_keys, int max_blocks, int block_size, int n_heads, int n_kv_heads,
    int head_dim, int split_len, int splits, float scale, int window, float softcap) {
    __shared__ float qs[ATTN_MAX_HD];
    __shared__ float sc[ATTN_MAX_SPLIT];
    __shared__ float sh[32];
    const int sel = blockIdx.x / n_heads, h = blockIdx.x % n_heads, split = blockIdx.y;
    const int row = (int)row_ids[sel];
    const int g = h / (n_heads / n_kv_heads), kvd = n_kv_heads * head_dim;
    const int nk = (int)n_keys[row];
    const int lo = window > 0 ? max(0, nk - window) : 0;
    const int j0 = lo + split * split_len, j1 = min(nk, j0 + split_len);
    float* out = part + (((size_t)sel * n_heads + h) * splits + split) * (head_dim + 2);
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
        const bf16_t* kr = k_cache + kv_slot(table, j, block_size) * kvd + g * head_dim;
        float d = 0.0f;
        for (int i = lane; i < head_dim; i += 32) d += qs[i] * bf16_to_f32(kr[i]);
        d = warp_sum(d);
        if (lane == 0) sc[j - j0] = softcap > 0.0f ? tanhf(d * scale / softcap) * softcap : d * scale;
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
            acc += sc[j - j0] *
                   bf16_to_f32(v_cache[kv_slot(table, j, block_size) * kvd + g * head_dim + i]);
        out[i] = acc;
    }
    if (threadIdx.x == 0) {
        out[head_dim] = m;
        out[head_dim + 1] = l;
    }
}

// attn_combine: grid selected rows * n_heads, threads over head dims. Batch row
// row_ids[i] of out (rows, n_heads * head_dim) = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M),
// M = max_s m_s (split 0 is never empty).
extern "C" __global__ void attn_combine(float* __restrict__ out, const float* __restrict__ part,
                                        const u32* __restrict__ row_ids, int n_heads,
                                        int head_dim, int splits) {
    const float* p = part + (size_t)blockIdx.x * splits * (head_dim + 2);
    const size_t o = ((size_t)row_ids[blockIdx.x / n_heads] * n_heads + blockIdx.x % n_heads) *
                     head_dim;
    float M = NEG_INF;
    for (int s = 0; s < splits; ++s) M = fmaxf(M, p[s * (head_dim + 2) + head_dim]);
    float L = 0.0f;
    for (int s = 0; s < splits; ++s)
        L += p[s * (head_dim + 2) + head_dim + 1] * expf(p[s * (head_dim + 2) + head_dim] - M);
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float a = 0.0f;
        for (int s = 0; s < splits; ++s)
            a += p[s * (head_dim + 2) + i] * expf(p[s * (head_dim + 2) + head_dim] - M);
        out[o + i] = a / L;
    }
}

// attn_prefill_hd{64,128}: FlashAttention-2 (Dao 2023) on mma.m16n8k16 bf16. Grid (tiles,
// n_heads), 128 threads. Tile i = tiles[4 i ..] = (sequence, first batch row, rows <= 64, position
// of the first row): consecutive rows of one sequence, row r at position pos0 + r attending to
// keys 0 ..= pos0 + r (with a sliding window, window > 0, only keys past pos0 + r - window);
// scores as attn_partial's (scale, then the soft cap when softcap > 0).
// Each warp owns 16 query rows held as bf16 A fragments; the block walks
// the keys 64 at a time, staging K as (key, dim-pair) words and V transposed as (dim, key-pair)
// words (both copied from the bf16 cache, rows padded by 4 words so fragment loads
// hit distinct banks), S = Q K^T on tensor cores, the causal mask, an online softmax in base 2
// per row (each lane keeps partial row sums; the quad reduces them once at the end), and
// O += P V with P rounded to bf16 straight from the S accumulators (the C layout of m16n8 is
// the A layout of m16n8k16). Q, K, V and P are bf16, everything else f32.
#define FA_BQ 64
#define LOG2E_F 1.4426950408889634f
#define FA_BK 64

template <int HD>
__device__ __forceinline__ void attn_prefill(float* __restrict__ out, const float* __restrict__ q,
                                             const bf16_t* __restrict__ k_cache,
                                             const bf16_t* __restrict__ v_cache,
                                             const u32* __restrict__ tables,
                                             const u32* __restrict__ tiles, int max_blocks,
                                             int block_size, int n_heads, int n_kv_heads,
                                             float scale, int window, float softcap) {
    constexpr int KLD = HD / 2 + 4, VLD = FA_BK / 2 + 4, KSTEPS = HD / 16, DT = HD / 8;
    constexpr int NT = FA_BK / 8; // n8 tiles of keys per step
    __shared__ __align__(16) u32 ks[FA_BK * KLD]; // (key, dim pair) bf16x2
    __shared__ __align__(16) u32 vt[HD * VLD];    // (dim, key pair) bf16x2
    const u32* tl = tiles + 4 * blockIdx.x;
    const int seq = (int)tl[0], row0 = (int)tl[1], count = (int)tl[2], pos0 = (int)tl[3];
    const int h = blockIdx.y, kvh = h / (n_heads / n_kv_heads);
    const size_t kvd = (size_t)n_kv_heads * HD, qd = (size_t)n_heads * HD;
    const u32* table = tables + (size_t)seq * max_blocks;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int r_lo = warp * 16 + g, r_hi = r_lo + 8; // this lane's two rows in the tile
    // keys visible to each row (0 for rows past the tile: fully masked, never written)
    const int nk_lo = r_lo < count ? pos0 + r_lo + 1 : 0;
    const int nk_hi = r_hi < count ? pos0 + r_hi + 1 : 0;
    // first key each row sees (a window's lower edge; may be negative: nothing masked)
    const int lo_lo = window > 0 ? pos0 + r_lo + 1 - window : 0;
    const int lo_hi = window > 0 ? pos0 + r_hi + 1 - window : 0;
    u32 qf[KSTEPS][4];
#pragma unroll
    for (int kk = 0; kk < KSTEPS; ++kk)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int r = (e & 1) ? r_hi : r_lo, w = kk * 8 + t + (e >> 1) * 4;
            const float* qr = q + (size_t)(row0 + r) * qd + (size_t)h * HD + 2 * w;
            qf[kk][e] = r < count ? pack_bf16x2(qr[0], qr[1]) : 0u;
        }
    float o[DT][4];
#pragma unroll
    for (int d = 0; d < DT; ++d)
#pragma unroll
        for (int c = 0; c < 4; ++c) o[d][c] = 0.0f;
    float m_lo = NEG_INF, m_hi = NEG_INF, l_lo = 0.0f, l_hi = 0.0f;
    const int kmax = pos0 + count;
    // key steps wholly below the tile's first row's window hold nothing any row sees
    const int kfirst = window > 0 ? max(0, pos0 + 1 - window) / FA_BK * FA_BK : 0;
    for (int k0 = kfirst; k0 < kmax; k0 += FA_BK) {
        __syncthreads(); // the previous step's reads of ks / vt are done
        for (int e = threadIdx.x; e < FA_BK * (HD / 2); e += blockDim.x) {
            const int kr = e / (HD / 2), w = e % (HD / 2), p = k0 + kr;
            // a (dim, dim + 1) pair of bf16 keys is one aligned word of the cache (kvd, HD even)
            ks[kr * KLD + w] = p < kmax ? *(const u32*)(k_cache +
                                                        kv_slot(table, p, block_size) * kvd +
                                                        (size_t)kvh * HD + 2 * w)
                                        : 0u;
        }
        for (int e = threadIdx.x; e < (FA_BK / 2) * HD; e += blockDim.x) {
            const int kp = e / HD, d = e % HD, p = k0 + 2 * kp;
            const size_t off = (size_t)kvh * HD + d;
            const u32 v0 = p < kmax ? v_cache[kv_slot(table, p, block_size) * kvd + off] : 0u;
            const u32 v1 =
                p + 1 < kmax ? v_cache[kv_slot(table, p + 1, block_size) * kvd + off] : 0u;
            vt[d * VLD + kp] = v0 | (v1 << 16); // the lower key in the low half
        }
        __syncthreads();
        float s[NT][4];
#pragma unroll
        for (int j = 0; j < NT; ++j) {
#pragma unroll
            for (int c = 0; c < 4; ++c) s[j][c] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KSTEPS; ++kk) {
                u32 b[2];
                frag_b(b, ks, KLD, j * 8, kk * 8, g, t);
                mma_bf16(s[j], qf[kk], b);
            }
        }
        float mx_lo = NEG_INF, mx_hi = NEG_INF;
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int key = k0 + j * 8 + t * 2 + (c & 1);
                const bool hi = c >= 2;
                const bool seen = key < (hi ? nk_hi : nk_lo) && key >= (hi ? lo_hi : lo_lo);
                float x = s[j][c] * scale;
                if (softcap > 0.0f) x = tanhf(x / softcap) * softcap;
                const float v = seen ? x * LOG2E_F : NEG_INF;
                s[j][c] = v;
                if (hi)
                    mx_hi = fmaxf(mx_hi, v);
                else
                    mx_lo = fmaxf(mx_lo, v);
            }
        // the quad (t = 0..3) holds one row's keys
#pragma unroll
        for (int o2 = 1; o2 < 4; o2 <<= 1) {
            mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, o2));
            mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, o2));
        }
        const float mn_lo = fmaxf(m_lo, mx_lo), mn_hi = fmaxf(m_hi, mx_hi);
        // a row with no visible key yet subtracts 0, so exp2(-inf) = 0 instead of NaN
        const float base_lo = mn_lo == NEG_INF ? 0.0f : mn_lo;
        const float base_hi = mn_hi == NEG_INF ? 0.0f : mn_hi;
        const float a_lo = exp2f(m_lo - base_lo), a_hi = exp2f(m_hi - base_hi);
        m_lo = mn_lo;
        m_hi = mn_hi;
        l_lo *= a_lo;
        l_hi *= a_hi;
#pragma unroll
        for (int d = 0; d < DT; ++d) {
            o[d][0] *= a_lo;
            o[d][1] *= a_lo;
            o[d][2] *= a_hi;
            o[d][3] *= a_hi;
        }
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const bool hi = c >= 2;
                const float p = exp2f(s[j][c] - (hi ? base_hi : base_lo));
                s[j][c] = p;
                if (hi)
                    l_hi += p;
                else
                    l_lo += p;
            }
#pragma unroll
        for (int kk = 0; kk < FA_BK / 16; ++kk) {
            const u32 pa[4] = {pack_bf16x2(s[2 * kk][0], s[2 * kk][1]),
                               pack_bf16x2(s[2 * kk][2], s[2 * kk][3]),
                               pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                               pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int d = 0; d < DT; ++d) {
                u32 b[2];
                frag_b(b, vt, VLD, d * 8, kk * 8, g, t);
                mma_bf16(o[d], pa, b);
            }
        }
    }
#pragma unroll
    for (int o2 = 1; o2 < 4; o2 <<= 1) {
        l_lo += __shfl_xor_sync(0xffffffffu, l_lo, o2);
        l_hi += __shfl_xor_sync(0xffffffffu, l_hi, o2);
    }
#pragma unroll
    for (int d = 0; d < DT; ++d)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const bool hi = c >= 2;
            const int r = hi ? r_hi : r_lo;
            if (r < count)
                out[(size_t)(row0 + r) * qd + (size_t)h * HD + d * 8 + t * 2 + (c & 1)] =
                    o[d][c] / (hi ? l_hi : l_lo);
        }
}

#define ATTN_PREFILL(HD)                                                                      \
    extern "C" __global__ void __launch_bounds__(128) attn_prefill_hd##HD(                    \
        float* __restrict__ out, const float* __restrict__ q, const bf16_t* __restrict__ k,   \
        const bf16_t* __restrict__ v, const u32* __restrict__ tables,                         \
        const u32* __restrict__ tiles, int max_blocks, int block_size, int n_heads,           \
        int n_kv_heads, float scale, int window, float softcap) {                             \
        attn_prefill<HD>(out, q, k, v, tables, tiles, max_blocks, block_size, n_heads,        \
                         n_kv_heads, scale, window, softcap);                                 \
    }
ATTN_PREFILL(64)
ATTN_PREFILL(128)
