//! Dense matmul `out (m, n) = x (m, k) · Wᵀ` on the CPU, W `(n, k)` in f32, f16 or bf16.
//!
//! - Register-tiled micro-kernels (MR tokens × NR weight rows, 8-lane accumulators): AVX2 + FMA +
//!   F16C where the CPU has them, a portable lane-array version otherwise; `panels` is the
//!   AVX-512 variant on weights repacked at load.
//! - Every output element is reduced in the same order whatever tile it falls in, so a prompt's
//!   logits are bit-identical batched or token by token (what greedy batching relies on).
//! - The n weight rows split into contiguous chunks, one rayon task each; a task streams its
//!   slice of W once per block of MC tokens, so x stays hot in L2.
//! - Also the f32 `dot` the attention and the norm reduce in.

pub mod amx;
pub mod panels;

use half::{bf16, f16};
use rayon::prelude::*;

/// Tokens per cache block.
const MC: usize = 64;
/// Micro-tile: tokens × weight rows. 4 × 3 = 12 accumulators + 3 weight + 1 x registers = 16 ymm.
const MR: usize = 4;
const NR: usize = 3;

/// Weight element types the kernels read.
pub trait WElem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// Load 8 consecutive elements widened to f32.
    ///
    /// # Safety
    /// `p .. p + 8` must be readable and the CPU must support AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
    /// Load the first `live` of 16 consecutive elements widened to f32, zeros after.
    ///
    /// # Safety
    /// `p .. p + live` must be readable (live <= 16); CPU has AVX-512F/BW/VL.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self, live: usize) -> std::arch::x86_64::__m512;
}

/// The lane mask of the first `live` of 16 lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn mask16(live: usize) -> u16 {
    if live >= 16 {
        u16::MAX
    } else {
        (1u16 << live) - 1
    }
}

impl WElem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn load16(p: *const Self, live: usize) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_maskz_loadu_ps(mask16(live), p)
    }
}

impl WElem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn load16(p: *const Self, live: usize) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask16(live), p as *const i16))
    }
}

impl WElem for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // bf16 is the top half of an f32: widen to 32 bits and shift into place.
        let w = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
        _mm256_castsi256_ps(_mm256_slli_epi32(w, 16))
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn load16(p: *const Self, live: usize) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask16(live), p as *const i16));
        _mm512_castsi512_ps(_mm512_slli_epi32(w, 16))
    }
}

/// Which micro-kernel family runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// x86-64 AVX2 + FMA + F16C intrinsics.
    Avx2,
    /// Plain Rust over 8-lane arrays (any CPU).
    Portable,
}

impl Isa {
    /// The best family this CPU supports.
    pub fn detect() -> Isa {
        if has_avx2() {
            Isa::Avx2
        } else {
            Isa::Portable
        }
    }
}

/// Whether the AVX-512 panel kernels (`panels`) can run here.
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX2 kernels can run here (cached by std after the first call).
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::WElem;
    use std::arch::x86_64::*;

    /// o = Σ_j p[j] · (row j of v), FMA in key order; 64 columns at a time stay in registers.
    /// Row j lives in block `blocks[j / bs]`: at v + (blocks[j / bs] · bs + j % bs) · ldv.
    ///
    /// # Safety
    /// CPU has AVX2+FMA; every row j < p.len() holds o.len() values at that address.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weighted_rows(
        o: &mut [f32],
        p: &[f32],
        v: *const f32,
        ldv: usize,
        blocks: &[u32],
        bs: usize,
    ) {
        let d = o.len();
        let block = |blk: u32| v.add(blk as usize * bs * ldv);
        let mut c0 = 0;
        while c0 + 64 <= d {
            let mut acc = [_mm256_setzero_ps(); 8];
            for (pb, &blk) in p.chunks(bs).zip(blocks) {
                let base = block(blk).add(c0);
                for (j, &pj) in pb.iter().enumerate() {
                    let pv = _mm256_set1_ps(pj);
                    let r = base.add(j * ldv);
                    for (u, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(pv, _mm256_loadu_ps(r.add(8 * u)), *a);
                    }
                }
            }
            for (u, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(o.as_mut_ptr().add(c0 + 8 * u), *a);
            }
            c0 += 64;
        }
        while c0 + 8 <= d {
            let mut a = _mm256_setzero_ps();
            for (pb, &blk) in p.chunks(bs).zip(blocks) {
                let base = block(blk).add(c0);
                for (j, &pj) in pb.iter().enumerate() {
                    a = _mm256_fmadd_ps(_mm256_set1_ps(pj), _mm256_loadu_ps(base.add(j * ldv)), a);
                }
            }
            _mm256_storeu_ps(o.as_mut_ptr().add(c0), a);
            c0 += 8;
        }
        for (c, oc) in o.iter_mut().enumerate().skip(c0) {
            let mut a = 0f32;
            for (pb, &blk) in p.chunks(bs).zip(blocks) {
                let base = block(blk).add(c);
                for (j, &pj) in pb.iter().enumerate() {
                    a = pj.mul_add(*base.add(j * ldv), a);
                }
            }
            *oc = a;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// out[i * ldo + j] = dot(x row i, w row j) for i < R, j < C.
    ///
    /// # Safety
    /// x: R rows of k f32 at stride ldx; w: C rows of k at stride ldw; out: R rows of C at
    /// stride ldo; all in bounds. CPU has AVX2+FMA+F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub unsafe fn tile<const R: usize, const C: usize, W: WElem>(
        x: *const f32,
        ldx: usize,
        w: *const W,
        ldw: usize,
        k: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let k8 = k / 8 * 8;
        let mut kk = 0;
        while kk < k8 {
            let mut wv = [_mm256_setzero_ps(); C];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = W::load8(w.add(j * ldw + kk));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.add(i * ldx + kk));
                for (a, v) in row.iter_mut().zip(wv.iter()) {
                    *a = _mm256_fmadd_ps(xv, *v, *a);
                }
            }
            kk += 8;
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, a) in row.iter().enumerate() {
                let mut s = hsum(*a);
                for t in k8..k {
                    s = (*x.add(i * ldx + t)).mul_add((*w.add(j * ldw + t)).to_f32(), s);
                }
                *out.add(i * ldo + j) = s;
            }
        }
    }
}

mod portable {
    use super::WElem;

    /// Same contract as the AVX2 `tile`, in plain Rust (8 lanes, summed pairwise at the end).
    ///
    /// # Safety
    /// Pointers as for the AVX2 tile.
    #[inline(always)]
    pub unsafe fn tile<const R: usize, const C: usize, W: WElem>(
        x: *const f32,
        ldx: usize,
        w: *const W,
        ldw: usize,
        k: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let mut acc = [[[0f32; 8]; C]; R];
        let k8 = k / 8 * 8;
        let mut kk = 0;
        while kk < k8 {
            for (i, row) in acc.iter_mut().enumerate() {
                for (j, a) in row.iter_mut().enumerate() {
                    #[allow(clippy::needless_range_loop)] // l indexes x, w and a alike
                    for l in 0..8 {
                        // plain a + x * w: without the fma target feature, mul_add is a
                        // libm call
                        a[l] += *x.add(i * ldx + kk + l) * (*w.add(j * ldw + kk + l)).to_f32();
                    }
                }
            }
            kk += 8;
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, a) in row.iter().enumerate() {
                let h = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
                let h = [h[0] + h[2], h[1] + h[3]];
                let mut s = h[0] + h[1];
                for t in k8..k {
                    s += *x.add(i * ldx + t) * (*w.add(j * ldw + t)).to_f32();
                }
                *out.add(i * ldo + j) = s;
            }
        }
    }
}

/// Raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: only used to hand disjoint output regions to rayon tasks (`matmul`, attention).
unsafe impl Send for SendPtr {}
// SAFETY: as above; no two tasks touch the same element.
unsafe impl Sync for SendPtr {}

/// Split the n output columns into contiguous chunks (multiples of `nr`, enough to balance
/// the pool, big enough to amortise a task) and run `f(n0, n1)` for each: on rayon when the
/// product is large, inline otherwise. The float, decoded and int8 GEMMs all schedule through
/// this; an element's reduction order does not depend on the chunk it falls in.
pub(crate) fn for_each_column_chunk(
    m: usize,
    n: usize,
    k: usize,
    nr: usize,
    f: impl Fn(usize, usize) + Sync,
) {
    let threads = rayon::current_num_threads().max(1);
    let chunk = (n.div_ceil(threads * 4)).max(16).div_ceil(nr) * nr;
    let n_chunks = n.div_ceil(chunk);
    let run = |c: usize| f(c * chunk, ((c + 1) * chunk).min(n));
    if n_chunks <= 1 || m * n * k < 32 * 1024 {
        (0..n_chunks).for_each(run);
    } else {
        (0..n_chunks).into_par_iter().for_each(run);
    }
}

/// Compute output columns `n0..n1` for all m tokens: out[i·ldo + j] = x row i · w row j, rows
/// of x at stride ldx and of w at stride ldw.
///
/// # Safety
/// x holds m rows of k at stride ldx, w rows 0..n1 of k at stride ldw, out m rows of n1 at
/// stride ldo.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn block<W: WElem>(
    isa: Isa,
    x: &[f32],
    ldx: usize,
    w: &[W],
    ldw: usize,
    m: usize,
    k: usize,
    n0: usize,
    n1: usize,
    out: *mut f32,
    ldo: usize,
) {
    macro_rules! t {
        ($r:expr, $c:expr, $i:expr, $j:expr) => {{
            let (xp, wp, op) = (
                x.as_ptr().add($i * ldx),
                w.as_ptr().add($j * ldw),
                out.add($i * ldo + $j),
            );
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx2 {
                avx2::tile::<$r, $c, W>(xp, ldx, wp, ldw, k, op, ldo);
            } else {
                portable::tile::<$r, $c, W>(xp, ldx, wp, ldw, k, op, ldo);
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = isa;
                portable::tile::<$r, $c, W>(xp, ldx, wp, ldw, k, op, ldo);
            }
        }};
    }
    let mut i0 = 0;
    while i0 < m {
        let i1 = (i0 + MC).min(m);
        let mut j = n0;
        while j + NR <= n1 {
            let mut i = i0;
            while i + MR <= i1 {
                t!(MR, NR, i, j);
                i += MR;
            }
            while i < i1 {
                t!(1, NR, i, j);
                i += 1;
            }
            j += NR;
        }
        while j < n1 {
            for i in i0..i1 {
                t!(1, 1, i, j);
            }
            j += 1;
        }
        i0 = i1;
    }
}

/// out (m, n) = x (m, k) · w (n, k)ᵀ, multithreaded over n, with the best kernels for this CPU.
pub fn matmul<W: WElem>(out: &mut [f32], x: &[f32], w: &[W], m: usize, n: usize, k: usize) {
    matmul_with(Isa::detect(), out, x, w, m, n, k)
}

/// `matmul` with a chosen kernel family. Panics if the buffers are too small for the shape, or
/// if `Isa::Avx2` is asked for on a CPU without it.
pub fn matmul_with<W: WElem>(
    isa: Isa,
    out: &mut [f32],
    x: &[f32],
    w: &[W],
    m: usize,
    n: usize,
    k: usize,
) {
    assert!(
        out.len() >= m * n && x.len() >= m * k && w.len() >= n * k,
        "matmul: buffers too small"
    );
    assert!(
        isa == Isa::Portable || has_avx2(),
        "AVX2 kernels requested on a CPU without AVX2/FMA/F16C"
    );
    let out_ptr = SendPtr(out.as_mut_ptr());
    for_each_column_chunk(m, n, k, NR, |n0, n1| {
        let p = out_ptr;
        // SAFETY: this chunk writes only columns n0..n1 of out, disjoint from every other
        // chunk; the size checks above keep all accesses in bounds.
        unsafe { block(isa, x, k, w, k, m, k, n0, n1, p.0, n) }
    });
}

thread_local! {
    /// Per-thread rows decoded by `matmul_decoded` (NR × k f32), grown once, then reused.
    static DECODED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// out (m, n) = x (m, k) · Wᵀ for a weight whose rows are produced on demand: `decode(j, r,
/// buf)` writes rows j..j+r of W as f32 into buf (r × k). Used for weights stored in formats
/// the tiles cannot read directly (FP8 codes, INT4 groups); each row is decoded once per call
/// and then shared by all m tokens.
pub fn matmul_decoded(
    isa: Isa,
    out: &mut [f32],
    x: &[f32],
    m: usize,
    n: usize,
    k: usize,
    decode: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
) {
    assert!(
        out.len() >= m * n && x.len() >= m * k,
        "matmul_decoded: buffers too small"
    );
    assert!(
        isa == Isa::Portable || has_avx2(),
        "AVX2 kernels requested on a CPU without AVX2/FMA/F16C"
    );
    let out_ptr = SendPtr(out.as_mut_ptr());
    for_each_column_chunk(m, n, k, NR, |n0, n1| {
        let p = out_ptr;
        DECODED.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < NR * k {
                buf.resize(NR * k, 0.0);
            }
            let mut j = n0;
            while j < n1 {
                let r = NR.min(n1 - j);
                decode(j, r, &mut buf[..r * k]);
                // SAFETY: buf holds r rows of k; x holds m rows of k; this task writes only
                // columns j..j+r of out, disjoint from other tasks; bounds checked above.
                unsafe {
                    if r == NR {
                        block_rows::<NR>(isa, x, &buf[..r * k], m, n, k, j, p.0);
                    } else {
                        for jj in 0..r {
                            block_rows::<1>(
                                isa,
                                x,
                                &buf[jj * k..(jj + 1) * k],
                                m,
                                n,
                                k,
                                j + jj,
                                p.0,
                            );
                        }
                    }
                }
                j += r;
            }
        });
    });
}

/// All m tokens against C decoded rows `w` (C × k), written to columns j..j+C of out.
///
/// # Safety
/// out is (m, n) with j + C <= n; x is (m, k); w is (C, k).
#[allow(clippy::too_many_arguments)]
unsafe fn block_rows<const C: usize>(
    isa: Isa,
    x: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
    j: usize,
    out: *mut f32,
) {
    macro_rules! t {
        ($r:expr, $i:expr) => {{
            let (xp, op) = (x.as_ptr().add($i * k), out.add($i * n + j));
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx2 {
                avx2::tile::<$r, C, f32>(xp, k, w.as_ptr(), k, k, op, n);
            } else {
                portable::tile::<$r, C, f32>(xp, k, w.as_ptr(), k, k, op, n);
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = isa;
                portable::tile::<$r, C, f32>(xp, k, w.as_ptr(), k, k, op, n);
            }
        }};
    }
    let mut i = 0;
    while i + MR <= m {
        t!(MR, i);
        i += MR;
    }
    while i < m {
        t!(1, i);
        i += 1;
    }
}

/// Dot product of two f32 slices of equal length, in the kernels' reduction order.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let k = a.len().min(b.len());
    let mut out = 0f32;
    // SAFETY: both slices hold at least k elements; `out` is a single element (R = C = 1).
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            avx2::tile::<1, 1, f32>(a.as_ptr(), k, b.as_ptr(), k, k, &mut out, 1);
            return out;
        }
        portable::tile::<1, 1, f32>(a.as_ptr(), k, b.as_ptr(), k, k, &mut out, 1);
    }
    out
}
