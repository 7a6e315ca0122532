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

// The argmax of row (vocab), ties to the lowest index (the CPU sampler's rule); every thread
// gets it. A row with nothing above -inf (all -inf or NaN) gives 0, as the CPU's argmax does,
// never an id outside the vocabulary. sv / si: 32 slots of shared memory each.
__device__ u32 block_argmax(const float* __restrict__ row, int vocab, float* sv, u32* si) {
    float best = NEG_INF;
    u32 bi = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = row[i];
        if (v > best) {
            best = v;
            bi = (u32)i;
        }
    }
    warp_argmax(best, bi);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads(); // sv / si may still be read from a previous call
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
        if (lane == 0) si[0] = bi;
    }
    __syncthreads();
    return si[0];
}

// Greedy sampling on the device: out[row] = argmax of logits (rows, vocab), so only the token
// id crosses to the host. One block per row.
extern "C" __global__ void argmax_rows(u32* __restrict__ out, const float* __restrict__ logits,
                                       int vocab) {
    __shared__ float sv[32];
    __shared__ u32 si[32];
    const u32 id = block_argmax(logits + (size_t)blockIdx.x * vocab, vocab, sv, si);
    if (threadIdx.x == 0) out[blockIdx.x] = id;
}

// sampler.rs::order_key: a > b <=> key(a) > key(b) for non-NaN floats.
__device__ __forceinline__ u32 order_key(float v) {
    const u32 b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// The HF repetition penalty at n (flat index, penalty bits) pairs of logits (rows, vocab)
// (sampler.rs::penalize: each row's ids distinct): positive logits divided, negative ones
// multiplied. One thread per pair.
extern "C" __global__ void penalize(float* __restrict__ logits, const u32* __restrict__ pairs,
                                   int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float* l = logits + pairs[2 * i];
    const float p = __uint_as_float(pairs[2 * i + 1]);
    *l = *l > 0.0f ? __fdiv_rn(*l, p) : __fmul_rn(*l, p);
}

// Sum over the block of f(i) for i < vocab (each thread strides the row).
template <typename F>
__device__ __forceinline__ float row_sum(F f, int vocab, float* sh) {
    float s = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) s += f(i);
    return block_sum(s, sh);
}

// sampler.rs::draw on each row of logits (rows, vocab), sort-free, one block per row (a
// multiple of 32 threads, at most 1024), with the row's (temperature, top_k, top_p, u) in
// params (rows, 4) as bits; temperature 0 is the argmax. Candidates are the keys at or above
// the k-th largest (bisection on the 32-bit key: 32 counting passes), weights
// exp((z - max) * inv_t), top-p raises the cut to the largest key whose kept mass reaches
// top_p of the total (bisection again), and out[row] = the first kept id whose running weight
// sum exceeds u * the kept mass: each thread sums a contiguous chunk, a block scan gives each
// chunk's offset, and the thread whose chunk holds the crossing walks it.
extern "C" __global__ void __launch_bounds__(1024) sample_rows(u32* __restrict__ out,
                                                               const float* __restrict__ logits,
                                                               int vocab,
                                                               const u32* __restrict__ params) {
    __shared__ float sh[32];
    __shared__ float warp_tot[32];
    __shared__ u32 si[32];
    __shared__ int found, last;
    const float* z = logits + (size_t)blockIdx.x * vocab;
    const u32* pr = params + 4 * blockIdx.x;
    const float temperature = __uint_as_float(pr[0]), top_p = __uint_as_float(pr[2]),
                u = __uint_as_float(pr[3]);
    const int top_k = (int)pr[1];
    if (temperature == 0.0f) {
        const u32 id = block_argmax(z, vocab, sh, si);
        if (threadIdx.x == 0) out[blockIdx.x] = id;
        return;
    }
    const float inv_t = __fdiv_rn(1.0f, temperature);
    float m = NEG_INF;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) m = fmaxf(m, z[i]);
    m = block_max(m, sh);
    const auto weight = [=](float v) { return expf(__fmul_rn(__fsub_rn(v, m), inv_t)); };
    u32 cut = 0;
    if (top_k > 0 && top_k < vocab) {
        u32 lo = 0, hi = 0xffffffffu;
        while (lo < hi) {
            const u32 mid = lo + (u32)(((unsigned long long)hi - lo + 1ull) >> 1);
            const float c = row_sum([=](int i) { return order_key(z[i]) >= mid ? 1.0f : 0.0f; },
                                    vocab, sh);
            if (c >= (float)top_k) lo = mid;
            else hi = mid - 1;
        }
        cut = lo;
    }
    if (top_p < 1.0f) {
        const float target = __fmul_rn(
            top_p, row_sum([=](int i) { return order_key(z[i]) >= cut ? weight(z[i]) : 0.0f; },
                           vocab, sh));
        u32 lo = cut, hi = order_key(m);
        while (lo < hi) {
            const u32 mid = lo + (u32)(((unsigned long long)hi - lo + 1ull) >> 1);
            const float mass = row_sum(
                [=](int i) { return order_key(z[i]) >= mid ? weight(z[i]) : 0.0f; }, vocab, sh);
            if (mass >= target) lo = mid;
            else hi = mid - 1;
        }
        cut = lo;
    }
    const float r = __fmul_rn(
        u, row_sum([=](int i) { return order_key(z[i]) >= cut ? weight(z[i]) : 0.0f; }, vocab, sh));
    // this thread's chunk and its kept mass
    const int chunk = (vocab + blockDim.x - 1) / blockDim.x;
    const int c0 = min(vocab, (int)threadIdx.x * chunk), c1 = min(vocab, c0 + chunk);
    float s = 0.0f;
    int my_last = -1;
    for (int i = c0; i < c1; ++i)
        if (order_key(z[i]) >= cut) {
            s += weight(z[i]);
            my_last = i;
        }
    // scan of the chunk sums across the block; a chunk's start is exactly the previous chunk's
    // end (the same float operations), so the chunks tile [0, total) without gaps or overlaps
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float incl = s;
    for (int o = 1; o < 32; o <<= 1) {
        const float v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
    }
    float excl = __shfl_up_sync(0xffffffffu, incl, 1);
    if (lane == 0) excl = 0.0f;
    if (threadIdx.x == 0) {
        found = -1;
        last = -1;
    }
    if (lane == 31) warp_tot[warp] = incl;
    __syncthreads();
    if (threadIdx.x == 0) {
        // warp offsets in order, each the previous warp's last inclusive sum plus its offset:
        // the very addition that warp's lane 31 makes
        float acc = 0.0f;
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) {
            const float t = warp_tot[w];
            warp_tot[w] = acc;
            acc = t + acc;
        }
    }
    __syncthreads();
    excl += warp_tot[warp];
    incl += warp_tot[warp];
    atomicMax(&last, my_last);
    if (s > 0.0f && excl <= r && r < incl) {
        // the crossing is in this chunk; rounding may leave it at the chunk's last kept id
        float rr = r - excl;
        int pick = my_last;
        for (int i = c0; i < c1; ++i)
            if (order_key(z[i]) >= cut) {
                rr -= weight(z[i]);
                if (rr < 0.0f) {
                    pick = i;
                    break;
                }
            }
        found = pick;
    }
    __syncthreads();
    // r past the scanned total (the two sums round differently): the last kept id
    if (threadIdx.x == 0) out[blockIdx.x] = (u32)(found >= 0 ? found : last);
}
