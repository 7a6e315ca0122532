//! Intel AMX plumbing (Sapphire Rapids and later): detection, the Linux permission request, and
//! what the AMX kernels (`int8::amx`, `dense::amx`, `int4::amx`) share: tile configs, the tile
//! loop, the B-tile transpose, the padded activation rows and the layout slots.
//!
//! - Linux hands a process the 8 KiB tile state only after
//!   `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`; without it the first tile
//!   instruction faults. The request is made once, on first detection; a refusal (old kernel,
//!   a sandbox) means "no AMX", not an error.
//! - std's `is_x86_feature_detected!` for AMX is unstable, so CPUID leaf 7 is read directly.
//! - `FERROQ_AMX=0` in the environment turns the tile kernels off (the AVX-512 ones run), for
//!   A/B measurements on one machine.
//! - Stable Rust has no AMX intrinsics: the kernels use inline asm with fixed tile registers.
//!   The compiler never allocates tile registers, so they survive between asm blocks of one
//!   kernel; each kernel configures the tiles it uses and releases them before returning.

use std::sync::OnceLock;

thread_local! {
    /// (m rounded up to 16, k) BF16 activations for the BF16 tile kernels (the calling thread).
    static XB: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Run `f(xb, mp)` on (mp, k) BF16 activations, mp = m rounded up to a whole tile, whose first
/// m rows `fill` writes and whose other rows are zero: A tiles always load 16 rows.
pub fn with_bf16_rows<R>(
    m: usize,
    k: usize,
    fill: impl FnOnce(&mut [u16]),
    f: impl FnOnce(&[u16], usize) -> R,
) -> R {
    let mp = m.div_ceil(ROWS) * ROWS;
    XB.with(|xb| {
        let mut xb = xb.borrow_mut();
        super::grow(&mut xb, mp * k);
        fill(&mut xb[..m * k]);
        xb[m * k..mp * k].fill(0);
        f(&xb[..mp * k], mp)
    })
}

/// Bytes in one tile row (the architectural maximum, used by every tile here).
pub const ROW_BYTES: usize = 64;
/// Rows in a full tile.
pub const ROWS: usize = 16;

/// CPUID.(EAX=7, ECX=0):EDX bits.
#[cfg(target_arch = "x86_64")]
const AMX_BF16: u32 = 1 << 22;
#[cfg(target_arch = "x86_64")]
const AMX_TILE: u32 = 1 << 24;
#[cfg(target_arch = "x86_64")]
const AMX_INT8: u32 = 1 << 25;

/// Which AMX units this process may use: (int8, bf16); both false without permission.
fn units() -> (bool, bool) {
    static UNITS: OnceLock<(bool, bool)> = OnceLock::new();
    *UNITS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            // the epilogues and activation packing around the tile loops are AVX-512
            let avx512 = is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl");
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            let off = std::env::var_os("FERROQ_AMX").is_some_and(|v| v == "0");
            if off || !avx512 || edx & AMX_TILE == 0 || !request_tile_state() {
                return (false, false);
            }
            (edx & AMX_INT8 != 0, edx & AMX_BF16 != 0)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            (false, false)
        }
    })
}

/// Whether the INT8 tile unit (`tdpbssd`) is usable here.
pub fn has_int8() -> bool {
    units().0
}

/// Whether the BF16 tile unit (`tdpbf16ps`) is usable here.
pub fn has_bf16() -> bool {
    units().1
}

/// Ask Linux for the tile data state; true when granted.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM only changes this process's permitted
    // XSAVE features; it reads no memory. The syscall clobbers rcx and r11, declared here.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret == 0
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_state() -> bool {
    false
}

/// A palette-1 tile configuration: the 64-byte block `ldtilecfg` reads.
#[repr(C, align(64))]
pub struct TileConfig([u8; 64]);

impl TileConfig {
    /// Every one of the eight tiles `rows × 64 bytes`.
    pub fn uniform(rows: u8) -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1; // palette 1
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&(ROW_BYTES as u16).to_le_bytes());
            c[48 + t] = rows;
        }
        TileConfig(c)
    }

    /// Load this configuration on the calling thread; the tiles are released when the guard
    /// drops.
    ///
    /// # Safety
    /// The CPU has AMX and the permission was granted (`has_int8` or `has_bf16` returned true).
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn load(&self) -> TileGuard {
        std::arch::asm!("ldtilecfg [{}]", in(reg) self.0.as_ptr(), options(nostack, readonly));
        TileGuard(std::marker::PhantomData)
    }
}

/// Releases the tile state of the thread that loaded a configuration.
pub struct TileGuard(std::marker::PhantomData<*const ()>);

impl Drop for TileGuard {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a guard exists only after `TileConfig::load` ran on this thread, and it is
        // neither Send nor Clone, so it drops on the same thread.
        unsafe {
            std::arch::asm!("tilerelease", options(nostack, nomem));
        }
    }
}

/// The 16 × 16 transpose of 32-bit elements: out[j] lane i = rows[i] lane j. Laying weights
/// out as B tiles (k-pairs × columns) from row-major columns is this transpose, per 16 pairs.
///
/// # Safety
/// CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub unsafe fn transpose16(
    r: &[std::arch::x86_64::__m512i; 16],
) -> [std::arch::x86_64::__m512i; 16] {
    use std::arch::x86_64::*;
    // pairs of rows interleaved, then quads: u[4g + c], 128-bit lane L, holds rows 4g..4g+4 of
    // column 4L + c
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    let mut u = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        let (a, b, c, d) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
        u[4 * g] = _mm512_unpacklo_epi64(a, c);
        u[4 * g + 1] = _mm512_unpackhi_epi64(a, c);
        u[4 * g + 2] = _mm512_unpacklo_epi64(b, d);
        u[4 * g + 3] = _mm512_unpackhi_epi64(b, d);
    }
    // gather lane L of u[c], u[4 + c], u[8 + c], u[12 + c] into column 4L + c
    let mut out = [_mm512_setzero_si512(); 16];
    for c in 0..4 {
        let v = _mm512_shuffle_i32x4::<0b10_00_10_00>(u[c], u[4 + c]);
        let w = _mm512_shuffle_i32x4::<0b11_01_11_01>(u[c], u[4 + c]);
        let v2 = _mm512_shuffle_i32x4::<0b10_00_10_00>(u[8 + c], u[12 + c]);
        let w2 = _mm512_shuffle_i32x4::<0b11_01_11_01>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_i32x4::<0b10_00_10_00>(v, v2);
        out[8 + c] = _mm512_shuffle_i32x4::<0b11_01_11_01>(v, v2);
        out[4 + c] = _mm512_shuffle_i32x4::<0b10_00_10_00>(w, w2);
        out[12 + c] = _mm512_shuffle_i32x4::<0b11_01_11_01>(w, w2);
    }
    out
}

/// Four 16 × 16 accumulator tiles (i32 or f32), as `tilestored` writes them: row block r and
/// column block c at 2r + c.
#[repr(C, align(64))]
pub struct AccTiles<T>(pub [[T; ROWS * 16]; 4]);

/// The tile loop of one dot-product instruction: rows × cols (each 1 or 2) tiles of 16 tokens
/// × 16 columns accumulated over `steps` 64-byte k-steps, stored into acc. tmm0..3 accumulate
/// (2r + c), tmm4/5 hold A, tmm6/7 B.
macro_rules! tile_loop {
    ($(#[$doc:meta])* $name:ident, $op:literal, $elem:ty, $acc:ty) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// xp: rows · 16 token rows at stride lda elements, 64 · steps bytes of each readable;
        /// wp: cols blocks of B tiles (16 · steps rows of 64 bytes) at block stride wstride
        /// elements; the calling thread loaded `TileConfig::uniform(16)`.
        #[cfg(target_arch = "x86_64")]
        #[allow(clippy::too_many_arguments)]
        #[inline(always)]
        pub unsafe fn $name(
            xp: *const $elem,
            lda: usize,
            wp: *const $elem,
            wstride: usize,
            steps: usize,
            rows: usize,
            cols: usize,
            acc: &mut AccTiles<$acc>,
        ) {
            use std::arch::asm;
            // elements per 64-byte step of A; a B step is 16 such rows
            const PER: usize = ROW_BYTES / std::mem::size_of::<$elem>();
            let a = lda * std::mem::size_of::<$elem>(); // A row stride in bytes
            let (x1, w1) = (xp.add(ROWS * lda), wp.add(wstride));
            let s = ROW_BYTES; // B row stride
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            for step in 0..steps {
                let (a0, a1) = (xp.add(step * PER), x1.add(step * PER));
                let (b0, b1) = (wp.add(step * 16 * PER), w1.add(step * 16 * PER));
                match (rows, cols) {
                    (2, 2) => asm!(
                        "tileloadd tmm4, [{a0} + {a}*1]",
                        "tileloadd tmm6, [{b0} + {s}*1]",
                        "tileloadd tmm7, [{b1} + {s}*1]",
                        concat!($op, " tmm0, tmm4, tmm6"),
                        concat!($op, " tmm1, tmm4, tmm7"),
                        "tileloadd tmm5, [{a1} + {a}*1]",
                        concat!($op, " tmm2, tmm5, tmm6"),
                        concat!($op, " tmm3, tmm5, tmm7"),
                        a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
                        a = in(reg) a, s = in(reg) s, options(nostack, readonly)
                    ),
                    (2, _) => asm!(
                        "tileloadd tmm4, [{a0} + {a}*1]",
                        "tileloadd tmm6, [{b0} + {s}*1]",
                        concat!($op, " tmm0, tmm4, tmm6"),
                        "tileloadd tmm5, [{a1} + {a}*1]",
                        concat!($op, " tmm2, tmm5, tmm6"),
                        a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0,
                        a = in(reg) a, s = in(reg) s, options(nostack, readonly)
                    ),
                    (_, 2) => asm!(
                        "tileloadd tmm4, [{a0} + {a}*1]",
                        "tileloadd tmm6, [{b0} + {s}*1]",
                        "tileloadd tmm7, [{b1} + {s}*1]",
                        concat!($op, " tmm0, tmm4, tmm6"),
                        concat!($op, " tmm1, tmm4, tmm7"),
                        a0 = in(reg) a0, b0 = in(reg) b0, b1 = in(reg) b1,
                        a = in(reg) a, s = in(reg) s, options(nostack, readonly)
                    ),
                    _ => asm!(
                        "tileloadd tmm4, [{a0} + {a}*1]",
                        "tileloadd tmm6, [{b0} + {s}*1]",
                        concat!($op, " tmm0, tmm4, tmm6"),
                        a0 = in(reg) a0, b0 = in(reg) b0,
                        a = in(reg) a, s = in(reg) s, options(nostack, readonly)
                    ),
                }
            }
            let s: usize = 16 * 4; // a stored accumulator row: 16 four-byte values
            let p = acc.0.as_mut_ptr();
            asm!(
                "tilestored [{c0} + {s}*1], tmm0",
                "tilestored [{c1} + {s}*1], tmm1",
                "tilestored [{c2} + {s}*1], tmm2",
                "tilestored [{c3} + {s}*1], tmm3",
                c0 = in(reg) p, c1 = in(reg) p.add(1), c2 = in(reg) p.add(2),
                c3 = in(reg) p.add(3), s = in(reg) s, options(nostack)
            );
        }
    };
}

tile_loop!(
    /// INT8 tiles (`tdpbssd`: s8 × s8 into i32); a step is 64 k.
    int8_tiles,
    "tdpbssd",
    i8,
    i32
);
tile_loop!(
    /// BF16 tiles (`tdpbf16ps`: pairs of BF16 into f32); a step is 32 k.
    bf16_tiles,
    "tdpbf16ps",
    u16,
    f32
);

/// Copy the live part of rows × cols accumulator tiles to out (m, n): tokens i.. (those below
/// m), columns 16b.. (those below n).
///
/// # Safety
/// out holds m rows of n; 16b < n.
pub unsafe fn store_tiles(
    acc: &AccTiles<f32>,
    (rows, cols): (usize, usize),
    (i, b): (usize, usize),
    (m, n): (usize, usize),
    out: *mut f32,
) {
    for r in 0..rows {
        for c in 0..cols {
            let (ii, j0) = (i + r * ROWS, (b + c) * 16);
            let tile = &acc.0[2 * r + c];
            let live = n.saturating_sub(j0).min(16);
            for rr in 0..ROWS.min(m.saturating_sub(ii)) {
                let dst = out.add((ii + rr) * n + j0);
                std::ptr::copy_nonoverlapping(tile.as_ptr().add(rr * 16), dst, live);
            }
        }
    }
}

/// Where a task's column blocks go once laid out as B tiles. When several token chunks will
/// pass over them, every block of the task is laid out once, up front; when one chunk covers
/// the batch (short prefills, the LM head of a prefill), each column pair is laid out just
/// before its use into two slots, so a call holds two blocks rather than the task's columns.
#[derive(Clone, Copy)]
pub struct Slots {
    /// All blocks laid out up front.
    pub whole: bool,
    /// Tokens per chunk: 32 to 128, a multiple of 32, about 1 MiB of activation rows.
    pub chunk: usize,
    b0: usize,
}

impl Slots {
    /// Bytes of activations a token chunk keeps in L2 while column pairs pass over it.
    const CHUNK_BYTES: usize = 1 << 20;

    /// The layout for a task of blocks from b0 over mp padded tokens of `row_bytes` each.
    pub fn new(mp: usize, row_bytes: usize, b0: usize) -> Slots {
        let chunk = (Self::CHUNK_BYTES / row_bytes.max(1)).clamp(2 * ROWS, 8 * ROWS) / (2 * ROWS)
            * (2 * ROWS);
        Slots {
            whole: mp > chunk,
            chunk,
            b0,
        }
    }

    /// Slots needed for blocks b0..b1.
    pub fn count(self, b1: usize) -> usize {
        if self.whole {
            b1 - self.b0
        } else {
            (b1 - self.b0).min(2)
        }
    }

    /// The slot of block b (pairs start at even offsets from b0).
    pub fn of(self, b: usize) -> usize {
        if self.whole {
            b - self.b0
        } else {
            (b - self.b0) % 2
        }
    }
}
