//! CPU kernels through the backend: `cargo bench --bench cpu_kernels`. The CPU features the
//! kernels dispatched to are printed first; compare figures only within one run on one machine.

mod common;

use criterion::Criterion;
use ferroq::backend::cpu::{CpuBackend, CpuIsa};
use ferroq::backend::prelude::*;

fn main() {
    let b = CpuBackend::new();
    eprintln!("{}", b.describe());
    let mut c = common::configure(Criterion::default()).configure_from_args();
    common::backend_benches(&mut c, "cpu", &b);
    // a 512-token prefill on the best kernel families and the next ones down (the portable
    // sets take minutes and say nothing about speed)
    for (i, isa) in CpuIsa::all_available().into_iter().take(2).enumerate() {
        eprintln!("family set {i}: {isa:?}");
        let b = CpuBackend::with_isa(isa);
        common::prefill_linears(&mut c, &format!("cpu/prefill512/set{i}"), &b, 512);
    }
    c.final_summary();
}
