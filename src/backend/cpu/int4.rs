//! INT4 group-quantized weight rows decoded to f32 for the W4A16 matmul (`gemm::matmul_decoded`),
//! the same values as `QuantWeight::decode_rows`, bit for bit. Each group's 16 possible values
//! ((q − 8 − zero) · scale, offset-binary nibbles as GPTQ / compressed-tensors `pack_quantized`
//! store them) are computed once into a table; the AVX-512 path spreads 8 packed bytes into 16
//! in-order nibble indices and looks all 16 up with one `vpermps`, the portable path indexes
//! the table per nibble. Decode runs once per weight row per call, so at decode batch 1 it is
//! the whole cost of the W4A16 linear besides streaming the packed bytes.

/// Whether the AVX-512 path runs here.
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A borrowed INT4 weight: packed (n, k/2) nibbles, scale and zero (n, ceil(k / group)).
#[derive(Clone, Copy)]
pub struct Int4Rows<'a> {
    pub packed: &'a [u8],
    pub scale: &'a [f32],
    /// empty for symmetric weights
    pub zero: &'a [i8],
    pub group: usize,
    pub k: usize,
}

impl Int4Rows<'_> {
    /// The 16 values of group `gi` of row `j`, in the reference's arithmetic.
    fn table(&self, j: usize, gi: usize) -> [f32; 16] {
        let groups = self.k.div_ceil(self.group);
        let s = self.scale[j * groups + gi];
        let z = if self.zero.is_empty() {
            0.0
        } else {
            self.zero[j * groups + gi] as f32
        };
        std::array::from_fn(|q| ((q as i32 - 8) as f32 - z) * s)
    }

    /// Rows j..j+r into out (r × k). `avx512` picks the vector path (the caller checked the
    /// CPU); both paths write the same bits.
    pub fn decode(&self, j: usize, r: usize, out: &mut [f32], avx512: bool) {
        let (k, g) = (self.k, self.group);
        assert!(g > 0 && g % 2 == 0 && k % 2 == 0, "int4 rows: group and k must be even");
        assert!(out.len() >= r * k && self.packed.len() >= (j + r) * k / 2);
        assert!(!avx512 || has_avx512(), "AVX-512 int4 decode on a CPU without AVX-512F");
        for (jj, row) in out.chunks_exact_mut(k).take(r).enumerate() {
            let jr = j + jj;
            let bytes = &self.packed[jr * k / 2..(jr + 1) * k / 2];
            for (gi, chunk) in row.chunks_mut(g).enumerate() {
                let lut = self.table(jr, gi);
                let b = &bytes[gi * g / 2..gi * g / 2 + chunk.len() / 2];
                let mut done = 0;
                #[cfg(target_arch = "x86_64")]
                if avx512 {
                    // SAFETY: AVX-512F presence asserted above; chunk holds 2·b.len() values.
                    done = unsafe { avx512::group(&lut, b, chunk) };
                }
                for (pair, &byte) in chunk[done..].chunks_exact_mut(2).zip(&b[done / 2..]) {
                    pair[0] = lut[(byte & 15) as usize];
                    pair[1] = lut[(byte >> 4) as usize];
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Decode whole 16-value steps of one group; returns how many values were written.
    ///
    /// # Safety
    /// CPU has AVX-512F; out.len() >= 2 · bytes.len().
    #[target_feature(enable = "avx512f")]
    pub unsafe fn group(lut: &[f32; 16], bytes: &[u8], out: &mut [f32]) -> usize {
        let table = _mm512_loadu_ps(lut.as_ptr());
        let lo_mask = _mm_set1_epi16(0x000f);
        let hi_mask = _mm_set1_epi16(0x00f0);
        let steps = (2 * bytes.len()).min(out.len()) / 16;
        for s in 0..steps {
            // 8 bytes → 8 u16 lanes; low nibble stays in byte 0, high nibble moves to byte 1,
            // which puts the 16 nibbles in element order.
            let b = _mm_loadl_epi64(bytes.as_ptr().add(8 * s) as *const __m128i);
            let w = _mm_cvtepu8_epi16(b);
            let nib = _mm_or_si128(
                _mm_and_si128(w, lo_mask),
                _mm_slli_epi16(_mm_and_si128(w, hi_mask), 4),
            );
            let v = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(nib), table);
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * s), v);
        }
        steps * 16
    }
}
