//! Sampling on the device, so only token ids cross to the host.
//!
//! - The repetition penalty on the logits in place, then `kernels/sampling.cu::sample_rows`: the
//!   CPU's sort-free rule (`backend::sampling::draw`) or the argmax at temperature 0, one block
//!   per row — top-k / top-p cuts by bisection on the float order key, the token by a block scan.

use super::backend::CudaBackend;
use super::kernels::Kernel;
use super::launch::{check_len, driver_error, grid_1d, i32_of};
use super::scratch::Scratch;
use crate::backend::sampling::Draw;
use crate::error::Result;
use cudarc::driver::{CudaSlice, PushKernelArg};

impl CudaBackend {
    pub(super) fn sample_on_device(
        &self,
        logits: &mut CudaSlice<f32>,
        vocab: usize,
        draws: &[Draw<'_>],
        out: &mut [u32],
    ) -> Result<()> {
        let rows = draws.len();
        check_len("sample logits", logits.len(), rows * vocab.max(1))?;
        check_len("sampled ids", out.len(), rows)?;
        if rows == 0 {
            return Ok(());
        }
        let v = i32_of(vocab, "vocab")?;
        let stream = &self.gpu.stream;
        let mut sc = self.scratch()?;
        let Scratch {
            penalized,
            sample_params,
            ids,
            host,
            ..
        } = &mut *sc;
        // (flat index, penalty bits) for every penalized id of every row, built in the reused
        // host buffer (a pageable upload is staged before memcpy returns, so it can be reused)
        host.clear();
        for (r, d) in draws.iter().enumerate() {
            if d.penalty != 1.0 {
                for &t in d.penalized.iter().filter(|&&t| (t as usize) < vocab) {
                    host.extend([(r * vocab) as u32 + t, d.penalty.to_bits()]);
                }
            }
        }
        if !host.is_empty() {
            let n = host.len() / 2;
            let p_d = self.grow(penalized, host.len())?; // (n, 2)
            stream
                .memcpy_htod(host.as_slice(), &mut p_d.slice_mut(0..host.len()))
                .map_err(|e| driver_error("upload penalized ids", e))?;
            let n_i = i32_of(n, "penalized ids")?;
            let mut b = stream.launch_builder(self.function(Kernel::Penalize));
            b.arg(&mut *logits).arg(&*p_d).arg(&n_i);
            // SAFETY: matches penalize (one thread per pair); every flat index is inside the
            // rows × vocab logits (ids past the vocabulary dropped above), and a row's ids are
            // distinct, so no two threads write one logit.
            unsafe { self.launch(&mut b, grid_1d(n.div_ceil(256), 256), "repetition penalty") }?;
        }
        host.clear();
        for d in draws {
            host.extend([
                d.temperature.to_bits(),
                d.top_k.min(i32::MAX as usize) as u32,
                d.top_p.to_bits(),
                d.u.to_bits(),
            ]);
        }
        let pr = self.grow(sample_params, host.len())?; // (rows, 4)
        stream
            .memcpy_htod(host.as_slice(), &mut pr.slice_mut(0..host.len()))
            .map_err(|e| driver_error("upload sampling parameters", e))?;
        let ids = self.grow(ids, rows)?; // (rows)
        let mut b = stream.launch_builder(self.function(Kernel::SampleRows));
        b.arg(&mut *ids).arg(&*logits).arg(&v).arg(&*pr);
        // SAFETY: matches sample_rows (one block of 1024 threads per row, a multiple of 32);
        // logits hold rows × vocab values (checked), params rows × 4, ids rows.
        unsafe { self.launch(&mut b, grid_1d(rows, 1024), "sample") }?;
        stream
            .memcpy_dtoh(&ids.slice(0..rows), &mut out[..rows])
            .map_err(|e| driver_error("download", e))?;
        stream
            .synchronize()
            .map_err(|e| driver_error("synchronize", e))
    }
}
