//! CPU kernels through the backend: `cargo bench --bench cpu_kernels`. The CPU features the
//! kernels dispatched to are printed first; compare figures only within one run on one machine.

mod common;

use criterion::Criterion;
use ferroq::backend::cpu::CpuBackend;
use ferroq::backend::prelude::*;

fn main() {
    let b = CpuBackend::new();
    eprintln!("{}", b.describe());
    let mut c = common::configure(Criterion::default()).configure_from_args();
    common::backend_benches(&mut c, "cpu", &b);
    c.final_summary();
}
