//! Sampling on the device (issue 5): the repetition penalty on the logits in place, then the
//! greedy argmax or `kernels/sampling.cu::sample_row`, which runs `engine::sampler::draw`'s
//! sort-free rule (top-k and top-p cuts found by bisection on the float order key, the token by
//! a block scan of chunk weights) in one block, so only the token id crosses to the host.

use super::backend::{check, drv, grid1, i32_of, CudaBackend};
use super::kernels::Kernel;
use crate::backend::Backend;
use crate::engine::sampler::Draw;
use crate::error::Result;
use cudarc::driver::{CudaSlice, PushKernelArg};

impl CudaBackend {
    pub(super) fn sample_on_device(
        &self,
        logits: &mut CudaSlice<f32>,
        vocab: usize,
        d: &Draw<'_>,
    ) -> Result<u32> {
        check("sample logits", logits.len(), vocab.max(1))?;
        let v = i32_of(vocab, "vocab")?;
        if d.penalty != 1.0 && !d.penalized.is_empty() {
            let n = d.penalized.len();
            let mut sc = self.scratch()?;
            let ids = self.grow(&mut sc.penalized, n)?; // (n) distinct ids
            self.gpu
                .stream
                .memcpy_htod(d.penalized, &mut ids.slice_mut(0..n))
                .map_err(|e| drv("upload penalized ids", e))?;
            let n_i = i32_of(n, "penalized ids")?;
            let mut b = self.gpu.stream.launch_builder(self.f(Kernel::Penalize));
            b.arg(&mut *logits)
                .arg(&*ids)
                .arg(&n_i)
                .arg(&v)
                .arg(&d.penalty);
            // SAFETY: matches penalize (one thread per id; ids past the vocabulary skipped);
            // logits hold vocab values (checked), ids n distinct values (no two threads write
            // one logit).
            unsafe { self.go(&mut b, grid1(n.div_ceil(256), 256), "repetition penalty") }?;
        }
        let mut id = [0u32];
        if d.temperature == 0.0 {
            self.argmax_rows(logits, vocab, &mut id)?;
            return Ok(id[0]);
        }
        let mut sc = self.scratch()?;
        let out = self.grow(&mut sc.ids, 1)?;
        let (inv_t, top_k) = (1.0 / d.temperature, i32_of(d.top_k, "top_k")?);
        let mut b = self.gpu.stream.launch_builder(self.f(Kernel::SampleRow));
        b.arg(&mut *out)
            .arg(&*logits)
            .arg(&v)
            .arg(&inv_t)
            .arg(&top_k)
            .arg(&d.top_p)
            .arg(&d.u);
        // SAFETY: matches sample_row (one block of 1024 threads, a multiple of 32); logits hold
        // vocab values (checked), out one id.
        unsafe { self.go(&mut b, grid1(1, 1024), "sample") }?;
        self.gpu
            .stream
            .memcpy_dtoh(&out.slice(0..1), &mut id)
            .map_err(|e| drv("download", e))?;
        self.gpu
            .stream
            .synchronize()
            .map_err(|e| drv("synchronize", e))?;
        Ok(id[0])
    }
}
