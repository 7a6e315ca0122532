//! CUDA kernels through the backend: `cargo bench --bench cuda_kernels` on a machine with a
//! GPU; without one it says so and measures nothing.

mod common;

use criterion::Criterion;
use ferroq::backend::cuda::backend::CudaBackend;
use ferroq::backend::prelude::*;

fn main() {
    let b = match CudaBackend::new(0) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cuda_kernels: no GPU to measure ({e}); nothing run");
            return;
        }
    };
    eprintln!("{}", b.describe());
    let mut c = common::configure(Criterion::default()).configure_from_args();
    common::backend_benches(&mut c, "cuda", &b);
    common::prefill_linears(&mut c, "cuda/prefill512", &b, 512);
    c.final_summary();
}
