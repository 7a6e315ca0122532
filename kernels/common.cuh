// Shared by every ferroq kernel. NVRTC compiles each module as this file followed by the
// module's source, with no CUDA headers: bf16 is a 16-bit integer converted with inline PTX
// (cvt.rn.bf16.f32 needs sm_80+), and the reductions use warp shuffles. Deployment needs only
// libcuda + libnvrtc.
typedef unsigned short bf16_t;
typedef unsigned int u32;

__device__ __forceinline__ float bf16_to_f32(bf16_t h) {
    return __uint_as_float(((u32)h) << 16);
}

__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    bf16_t r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}

// Two f32 rounded to bf16 (nearest even) in one word, `lo` in the low half: the lower k index
// of an mma fragment word.
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

#define NEG_INF __int_as_float(0xff800000)

// Sum (MAX = false) or maximum (MAX = true) across the warp; every lane gets it.
template <bool MAX>
__device__ __forceinline__ float warp_reduce(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        const float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = MAX ? fmaxf(v, w) : v + w;
    }
    return v;
}

__device__ __forceinline__ float warp_sum(float v) { return warp_reduce<false>(v); }
__device__ __forceinline__ float warp_max(float v) { return warp_reduce<true>(v); }

// Sum or maximum over the block (blockDim.x a multiple of 32, at most 1024); `sh` holds 32
// floats. Every thread gets the result.
template <bool MAX>
__device__ __forceinline__ float block_reduce(float v, float* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_reduce<MAX>(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = (threadIdx.x < (blockDim.x >> 5)) ? sh[threadIdx.x] : (MAX ? NEG_INF : 0.0f);
    if (warp == 0) v = warp_reduce<MAX>(v);
    if (threadIdx.x == 0) sh[0] = v;
    __syncthreads();
    return sh[0];
}

__device__ __forceinline__ float block_sum(float v, float* sh) { return block_reduce<false>(v, sh); }
__device__ __forceinline__ float block_max(float v, float* sh) { return block_reduce<true>(v, sh); }

// Tensor-core fragments. Every operand is staged in shared memory as rows of 32-bit words:
// 4 int8 / e4m3 bytes or 2 bf16 of consecutive k per word, so one m16n8k32 8-bit step and one
// m16n8k16 bf16 step both consume 8 words (32 bytes) per row and share these loaders. s is
// row-major with `ld` words per row; w0 the first word of the k step; g = lane / 4,
// t = lane % 4 (the PTX fragment layouts of mma .row.col).
__device__ __forceinline__ void frag_a(u32* a, const u32* s, int ld, int r, int w0, int g, int t) {
    a[0] = s[(r + g) * ld + w0 + t];
    a[1] = s[(r + g + 8) * ld + w0 + t];
    a[2] = s[(r + g) * ld + w0 + t + 4];
    a[3] = s[(r + g + 8) * ld + w0 + t + 4];
}

__device__ __forceinline__ void frag_b(u32* b, const u32* s, int ld, int r, int w0, int g, int t) {
    b[0] = s[(r + g) * ld + w0 + t];
    b[1] = s[(r + g) * ld + w0 + t + 4];
}

// conv.cu stages one k step per round as 8 words padded by one per shared row.
#define MMA8_KW 8

// Stage rows r0 .. r0 + ROWS of the row-major byte matrix src (rows_total, k; k a multiple of
// 4), words kw0 .. kw0 + MMA8_KW, into dst; zero outside the matrix. The whole block shares it.
template <int ROWS>
__device__ __forceinline__ void stage_words(u32 (*dst)[MMA8_KW + 1], const void* src, int r0,
                                            int rows_total, int k, int kw0) {
    const int kw_total = k >> 2;
    for (int e = threadIdx.x; e < ROWS * MMA8_KW; e += blockDim.x) {
        const int r = e / MMA8_KW, c = e % MMA8_KW, gr = r0 + r, gk = kw0 + c;
        dst[r][c] = (gr < rows_total && gk < kw_total)
                        ? ((const u32*)((const unsigned char*)src + (size_t)gr * k))[gk]
                        : 0u;
    }
}

__device__ __forceinline__ void frag_a8(u32* a, const u32 (*s)[MMA8_KW + 1], int r, int g, int t) {
    frag_a(a, &s[0][0], MMA8_KW + 1, r, 0, g, t);
}

__device__ __forceinline__ void frag_b8(u32* b, const u32 (*s)[MMA8_KW + 1], int r, int g, int t) {
    frag_b(b, &s[0][0], MMA8_KW + 1, r, 0, g, t);
}

// One m16n8k32 s8 tensor-core step (sm_80+): c (int32) += a · b from frag_a8 / frag_b8.
__device__ __forceinline__ void mma_s8(int* c, const u32* a, const u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// One m16n8k16 bf16 tensor-core step (sm_80+): c (f32) += a · b. Its fragments have the same
// word layout as the 8-bit ones (a word holds 2 bf16 of consecutive k instead of 4 bytes), so
// frag_a8 / frag_b8 load them from the same staging.
__device__ __forceinline__ void mma_bf16(float* c, const u32* a, const u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// The pipelined tensor-core tile every dense GEMM shares (gemm_int8.cu's W8A8, gemm_fp8.cu's
// E4M3, gemm.cu's BF16): acc = the (BM, BN) tile at block (blockIdx.y, blockIdx.x) of
// a (m, k) . b (n, k)^T, both row-major with kb bytes per row (kb a multiple of 16, rows 16-byte
// aligned). Each stage stages 64 bytes of k (two mma k steps) per row with cp.async (sm_80+),
// double-buffered so the next stage's loads fly while this one's MMAs run; rows past m / n and
// bytes past kb are zero-filled (src-size 0), so any m, n. Staged rows are TC_LD = 20 words:
// 16-byte aligned for cp.async, and a fragment load's 8 rows x 4 words hit 32 distinct banks.
// WARPS_M x WARPS_N warps each own a (BM / WARPS_M) x (BN / WARPS_N) piece as 16 x 8 tiles.
#define TC_KB 64
#define TC_LD 20

__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 r;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
    return r;
}

// 16 bytes global -> shared, of which `bytes` (16 or 0) are read and the rest zero-filled.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }

// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

// Issue the copies of rows r0 .. r0 + ROWS, bytes b0 .. b0 + TC_KB of src into dst (ROWS, TC_LD).
template <int ROWS>
__device__ __forceinline__ void tc_stage(u32* dst, const unsigned char* src, int r0,
                                         int rows_total, int kb, int b0) {
    for (int e = threadIdx.x; e < ROWS * (TC_KB / 16); e += blockDim.x) {
        const int r = e / (TC_KB / 16), c = e % (TC_KB / 16), gr = r0 + r, gb = b0 + c * 16;
        const bool in = gr < rows_total && gb < kb;
        cp_async16(dst + r * TC_LD + c * 4, in ? src + (size_t)gr * kb + gb : src, in ? 16 : 0);
    }
}

template <int BM, int BN, int WARPS_M, int WARPS_N, typename Acc, typename Mma>
__device__ __forceinline__ void tc_gemm_tile(Acc (&acc)[BM / WARPS_M / 16][BN / WARPS_N / 8][4],
                                             const void* a, const void* b, int m, int n, int kb,
                                             Mma mma) {
    constexpr int MT = BM / WARPS_M / 16, NT = BN / WARPS_N / 8;
    __shared__ __align__(16) u32 as[2][BM * TC_LD];
    __shared__ __align__(16) u32 bs[2][BN * TC_LD];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int wm = (warp / WARPS_N) * (BM / WARPS_M), wn = (warp % WARPS_N) * (BN / WARPS_N);
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const unsigned char *ab = (const unsigned char*)a, *bb = (const unsigned char*)b;
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[i][j][c] = 0;
    const int stages = (kb + TC_KB - 1) / TC_KB;
    tc_stage<BM>(as[0], ab, m0, m, kb, 0);
    tc_stage<BN>(bs[0], bb, n0, n, kb, 0);
    cp_async_commit();
    for (int s = 0; s < stages; ++s) {
        const int cur = s & 1;
        if (s + 1 < stages) {
            tc_stage<BM>(as[cur ^ 1], ab, m0, m, kb, (s + 1) * TC_KB);
            tc_stage<BN>(bs[cur ^ 1], bb, n0, n, kb, (s + 1) * TC_KB);
        }
        cp_async_commit(); // an empty group on the last stage keeps the wait count uniform
        cp_async_wait<1>(); // stage s has landed (only the one just issued may be in flight)
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TC_KB / 32; ++kk) {
            u32 af[MT][4], bf[NT][2];
#pragma unroll
            for (int i = 0; i < MT; ++i) frag_a(af[i], as[cur], TC_LD, wm + i * 16, kk * 8, g, t);
#pragma unroll
            for (int j = 0; j < NT; ++j) frag_b(bf[j], bs[cur], TC_LD, wn + j * 8, kk * 8, g, t);
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NT; ++j) mma(acc[i][j], af[i], bf[j]);
        }
        __syncthreads(); // everyone is done reading `cur` before it is refilled
    }
}

// Hand every accumulator of tc_gemm_tile inside the (m, n) output to f(i, j, value), with the
// row i and column j of the m16n8 C fragment layout.
template <int BM, int BN, int WARPS_M, int WARPS_N, typename Acc, typename F>
__device__ __forceinline__ void tc_store(const Acc (&acc)[BM / WARPS_M / 16][BN / WARPS_N / 8][4],
                                         int m, int n, F f) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int i0 = blockIdx.y * BM + (warp / WARPS_N) * (BM / WARPS_M);
    const int j0 = blockIdx.x * BN + (warp % WARPS_N) * (BN / WARPS_N);
#pragma unroll
    for (int a = 0; a < BM / WARPS_M / 16; ++a)
#pragma unroll
        for (int b = 0; b < BN / WARPS_N / 8; ++b)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int i = i0 + a * 16 + g + (c >> 1) * 8, j = j0 + b * 8 + t * 2 + (c & 1);
                if (i < m && j < n) f(i, j, acc[a][b][c]);
            }
}

// Hopper's warpgroup MMA (wgmma, sm_90a; gemm_int8.cu / gemm_fp8.cu call it where the kernel
// is built for sm_90a, __CUDA_ARCH_FEAT_SM90_ALL): a 128 x 128 block tile, two warpgroups of
// 64 x 128, each k step one m64n128k32 wgmma reading both 8-bit operands from shared memory.
// Operands are staged by cp.async, WG_STAGES deep, in the no-swizzle K-major canonical layout of
// the PTX ISA (9.7.15.5.1.2, "interleaved"): 16-byte chunks stored chunk-major, chunk c of row r
// at c * 128 * 16 + r * 16, so an 8-row x 16-byte core matrix is 128 contiguous bytes, core
// matrices along M / N are 128 bytes apart (the descriptor's stride byte offset) and along K
// 128 * 16 bytes (the leading byte offset). 64 KiB per stage pair, 128 KiB in all (dynamic
// shared memory, opted in by the host).
#define WG_TILE 128
#define WG_KB 128
#define WG_STAGES 4
#define WG_OPERAND (WG_TILE * WG_KB)
#define WG_SMEM (2 * WG_STAGES * WG_OPERAND)

// Copy rows r0 .. r0 + WG_TILE, bytes b0 .. b0 + WG_KB of the row-major src (rows_total, kb)
// into dst in the layout above; zero outside the matrix. Lane 8j + i of a warp copies chunk j
// of 4 consecutive chunks of row i of 8: 64 contiguous bytes per row from global memory, 4 x 128
// contiguous bytes (all 32 banks, once each) into shared memory.
__device__ __forceinline__ void wg_stage(unsigned char* dst, const unsigned char* src, int r0,
                                         int rows_total, int kb, int b0) {
    constexpr int CPR = WG_KB / 16; // chunks per row
    for (int e = threadIdx.x; e < WG_TILE * CPR; e += blockDim.x) {
        const int blk = e >> 5, r = (blk / (CPR / 4)) * 8 + (e & 7);
        const int c = (blk % (CPR / 4)) * 4 + ((e >> 3) & 3);
        const int gr = r0 + r, gb = b0 + c * 16;
        const bool in = gr < rows_total && gb < kb;
        cp_async16(dst + c * WG_TILE * 16 + r * 16, in ? src + (size_t)gr * kb + gb : src,
                   in ? 16 : 0);
    }
}

// The shared-memory matrix descriptor (PTX ISA 9.7.15.5.1.2.2): start address, leading and
// stride byte offsets, each >> 4; swizzle mode 0 (none), base offset 0.
__device__ __forceinline__ unsigned long long wg_desc(const void* p, int lbo, int sbo) {
    return (unsigned long long)((smem_addr(p) & 0x3ffffu) >> 4) |
           ((unsigned long long)((lbo >> 4) & 0x3fff) << 16) |
           ((unsigned long long)((sbo >> 4) & 0x3fff) << 32);
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// cp.async writes shared memory through the generic proxy; wgmma reads it through the async
// proxy, which needs this fence in each writing thread before the barrier.
__device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
// Keep the compiler from moving accesses of an accumulator register across a wgmma that is
// still in flight (it cannot see the asynchrony).
__device__ __forceinline__ void wg_hold(int& r) { asm volatile("" : "+r"(r)::"memory"); }
__device__ __forceinline__ void wg_hold(float& r) { asm volatile("" : "+f"(r)::"memory"); }

// The 64 accumulator operands of an m64n128 wgmma, for the instruction wrappers' inline asm:
// their placeholders %0 .. %63 and their constraints c ("+r" for s32, "+f" for f32) on d[0..63].
#define WG_REGS64 \
    "%0, %1, %2, %3, %4, %5, %6, %7, " \
    "%8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, " \
    "%24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, " \
    "%40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, " \
    "%56, %57, %58, %59, %60, %61, %62, %63"
#define WG_ACC8(c, d, i) \
    c(d[i]), c(d[i + 1]), c(d[i + 2]), c(d[i + 3]), c(d[i + 4]), c(d[i + 5]), c(d[i + 6]), c(d[i + 7])
#define WG_ACC64(c, d)                                                                        \
    WG_ACC8(c, d, 0), WG_ACC8(c, d, 8), WG_ACC8(c, d, 16), WG_ACC8(c, d, 24), WG_ACC8(c, d, 32), \
        WG_ACC8(c, d, 40), WG_ACC8(c, d, 48), WG_ACC8(c, d, 56)

// acc (64 values per thread: this warpgroup's 64 x 128 piece in the m64nNk32 D layout) = the
// (WG_TILE, WG_TILE) tile at block (blockIdx.y, blockIdx.x) of a (m, kb) . b (n, kb)^T, 8-bit
// operands, kb a multiple of 16, any m, n. mma(d, desc_a, desc_b, accumulate) issues one k-32
// wgmma. PROMOTE (FP8): each stage's four k steps sum into `part` with the tensor cores' own
// accumulation, which is then added to acc in f32 — Hopper's FP8 tensor cores keep only about
// 14 bits while accumulating (DeepSeek-V3 report, sec. 3.3.2), so long sums are promoted every
// 128 values; integer accumulation is exact and runs one wgmma group ahead instead.
template <bool PROMOTE, typename Acc, typename Mma>
__device__ __forceinline__ void wg_gemm_tile(Acc (&acc)[64], Acc (&part)[64], const void* a,
                                             const void* b, int m, int n, int kb,
                                             unsigned char* smem, Mma mma) {
    unsigned char* as = smem;                          // WG_STAGES x (128 rows x WG_KB)
    unsigned char* bs = smem + WG_STAGES * WG_OPERAND; // the same for b
    const unsigned char *ag = (const unsigned char*)a, *bg = (const unsigned char*)b;
    const int wg = threadIdx.x >> 7, m0 = blockIdx.y * WG_TILE, n0 = blockIdx.x * WG_TILE;
    const int stages = (kb + WG_KB - 1) / WG_KB;
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = part[i] = 0;
#pragma unroll
    for (int s = 0; s < WG_STAGES - 2; ++s) {
        if (s < stages) {
            wg_stage(as + s * WG_OPERAND, ag, m0, m, kb, s * WG_KB);
            wg_stage(bs + s * WG_OPERAND, bg, n0, n, kb, s * WG_KB);
        }
        cp_async_commit();
    }
    for (int s = 0; s < stages; ++s) {
        cp_async_wait<WG_STAGES - 3>(); // stage s landed (this thread's copies)
        fence_proxy_async();
        __syncthreads(); // ... everyone's, and every warpgroup is done with stage s - 2
        const int next = s + WG_STAGES - 2, buf = next % WG_STAGES;
        if (next < stages) {
            wg_stage(as + buf * WG_OPERAND, ag, m0, m, kb, next * WG_KB);
            wg_stage(bs + buf * WG_OPERAND, bg, n0, n, kb, next * WG_KB);
        }
        cp_async_commit(); // possibly empty: keeps the wait count uniform
        const unsigned char* at = as + (s % WG_STAGES) * WG_OPERAND + wg * 64 * 16;
        const unsigned char* bt = bs + (s % WG_STAGES) * WG_OPERAND;
#pragma unroll
        for (int i = 0; i < 64; ++i) wg_hold(PROMOTE ? part[i] : acc[i]);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < WG_KB / 32; ++kk) {
            // a k step is chunks 2kk and 2kk + 1 of every row
            const unsigned long long da = wg_desc(at + kk * 2 * WG_TILE * 16, WG_TILE * 16, 128);
            const unsigned long long db = wg_desc(bt + kk * 2 * WG_TILE * 16, WG_TILE * 16, 128);
            if (PROMOTE)
                mma(part, da, db, kk > 0);
            else
                mma(acc, da, db, 1);
        }
        wg_commit();
        if (PROMOTE) {
            wg_wait<0>();
#pragma unroll
            for (int i = 0; i < 64; ++i) {
                wg_hold(part[i]);
                acc[i] += part[i];
            }
        } else {
            wg_wait<1>();
        }
    }
    wg_wait<0>();
#pragma unroll
    for (int i = 0; i < 64; ++i) wg_hold(acc[i]);
}

// Hand every accumulator of wg_gemm_tile inside the (m, n) output to f(i, j, value): value
// 4q + c of a thread is row 16 * (warp % 4) + g + 8 * (c / 2) of its warpgroup's 64, column
// 8q + 2t + c % 2 (the m64nNk32 D fragment).
template <typename Acc, typename F>
__device__ __forceinline__ void wg_store(const Acc (&acc)[64], int m, int n, F f) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int i0 = blockIdx.y * WG_TILE + (warp >> 2) * 64 + (warp & 3) * 16 + g;
    const int j0 = blockIdx.x * WG_TILE + 2 * t;
#pragma unroll
    for (int q = 0; q < 16; ++q)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int i = i0 + 8 * (c >> 1), j = j0 + 8 * q + (c & 1);
            if (i < m && j < n) f(i, j, acc[4 * q + c]);
        }
}

// The CUDA-core tiled GEMM both dense fallbacks share (gemm.cu's bf16, gemm_int4.cu's W4A16):
// out (m, n) = x (m, k) . w (n, k)^T [+ bias], 64 x 64 output tiles, 256 threads computing
// 4 x 4 each, k in steps of 16 through shared memory. xval(i, t) and wval(j, t) give the staged
// operands (called only inside the matrices; 0 is staged outside), so any m, n, k. Grid
// (ceil(n / 64), ceil(m / 64)).
#define TILE64 64
#define TILE64_K 16

template <typename XF, typename WF>
__device__ __forceinline__ void gemm_tile64(float* __restrict__ out,
                                            const float* __restrict__ bias, int m, int n, int k,
                                            XF xval, WF wval) {
    __shared__ float xs[TILE64_K][TILE64 + 1];
    __shared__ float ws[TILE64_K][TILE64 + 1];
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int m0 = blockIdx.y * TILE64, n0 = blockIdx.x * TILE64;
    float acc[4][4];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[r][c] = 0.0f;
    for (int k0 = 0; k0 < k; k0 += TILE64_K) {
        for (int e = tid; e < TILE64 * TILE64_K; e += 256) {
            const int i = e / TILE64_K, kk = e % TILE64_K, gi = m0 + i, gk = k0 + kk;
            xs[kk][i] = (gi < m && gk < k) ? xval(gi, gk) : 0.0f;
        }
        for (int e = tid; e < TILE64 * TILE64_K; e += 256) {
            const int j = e / TILE64_K, kk = e % TILE64_K, gj = n0 + j, gk = k0 + kk;
            ws[kk][j] = (gj < n && gk < k) ? wval(gj, gk) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TILE64_K; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int r = 0; r < 4; ++r) a[r] = xs[kk][ty + 16 * r];
#pragma unroll
            for (int c = 0; c < 4; ++c) b[c] = ws[kk][tx + 16 * c];
#pragma unroll
            for (int r = 0; r < 4; ++r)
#pragma unroll
                for (int c = 0; c < 4; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int gi = m0 + ty + 16 * r, gj = n0 + tx + 16 * c;
            if (gi < m && gj < n) out[(size_t)gi * n + gj] = bias ? acc[r][c] + bias[gj] : acc[r][c];
        }
}

// The online Hadamard rotation (src/quant/hadamard.rs) of a row staged in shared memory:
// s (dim) <- blockdiag(H_block) s, the Sylvester Hadamard scaled by 1/sqrt(block), block a
// power of two dividing dim, all blocks at once. The butterflies (u + v, u - v) and the final
// scaling are the CPU's, so the result is bit-identical to quant::hadamard::fwht. The caller
// synchronises before (s complete); every thread sees the result after.
__device__ __forceinline__ void fwht_row(float* s, int dim, int block) {
    const int half = block >> 1;
    for (int h = 1; h < block; h <<= 1) {
        for (int t = threadIdx.x; t < (dim >> 1); t += blockDim.x) {
            const int i = (t / half) * block + ((t % half) / h) * 2 * h + (t % half) % h;
            const float u = s[i], v = s[i + h];
            s[i] = u + v;
            s[i + h] = u - v;
        }
        __syncthreads();
    }
    const float norm = __fdiv_rn(1.0f, __fsqrt_rn((float)block));
    for (int i = threadIdx.x; i < dim; i += blockDim.x) s[i] = __fmul_rn(s[i], norm);
    __syncthreads();
}
