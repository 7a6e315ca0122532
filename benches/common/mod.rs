//! The kernel benchmarks shared by the CPU and CUDA benches: each op through the `Backend`
//! trait (what the model calls), on random data, reported by criterion in GB/s (decode-shaped
//! calls, which stream their weights once) or in elements/s = FLOP/s (prefill-shaped GEMMs),
//! next to a copy of the same size as the machine's measured memory bandwidth.

use criterion::{BenchmarkId, Criterion, Throughput};
use ferroq::backend::linear::{Linear, LinearWeight};
use ferroq::backend::prelude::*;
use ferroq::engine::sampler::Rng;
use ferroq::quant::weight::{quantize_weight, WeightMethod, WeightQConfig, WeightScope};
use ferroq::quant::{ActQuant, ActSpec, Phase, QDType};
use ferroq::tensor::{DType, HostTensor};
use std::sync::Arc;
use std::time::Duration;

/// Linear shapes (out, in): a 1B-class model's square projection and its MLP.
pub const SHAPES: [(usize, usize); 2] = [(2048, 2048), (8192, 2048)];
/// Token rows: decode (1) and a prefill chunk.
pub const ROWS: [usize; 2] = [1, 128];

/// The weight kinds ferroq runs.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    F16,
    Bf16,
    W8A8,
    Fp8,
    W4A16,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::F16, Kind::Bf16, Kind::W8A8, Kind::Fp8, Kind::W4A16];

    fn name(self) -> &'static str {
        match self {
            Kind::F16 => "f16",
            Kind::Bf16 => "bf16",
            Kind::W8A8 => "w8a8",
            Kind::Fp8 => "fp8",
            Kind::W4A16 => "w4a16",
        }
    }

    /// Bytes the weight of an [n, k] linear takes (scales left out).
    fn weight_bytes(self, n: usize, k: usize) -> u64 {
        let per = match self {
            Kind::F16 | Kind::Bf16 => 2.0,
            Kind::W8A8 | Kind::Fp8 => 1.0,
            Kind::W4A16 => 0.5,
        };
        (per * (n * k) as f64) as u64
    }
}

pub fn configure(c: Criterion) -> Criterion {
    c.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

fn linear_of<B: Backend>(
    b: &B,
    kind: Kind,
    n: usize,
    k: usize,
    rng: &mut Rng,
) -> Option<Linear<B>> {
    let w = rng.normals(n * k, 0.02);
    let quant = |dtype, scope| {
        let cfg = WeightQConfig {
            dtype,
            scope,
            symmetric: true,
            method: WeightMethod::MinMax,
        };
        quantize_weight(&w, n, k, &cfg).ok()
    };
    let (weight, act) = match kind {
        Kind::F16 | Kind::Bf16 => {
            let dtype = if matches!(kind, Kind::F16) {
                DType::F16
            } else {
                DType::BF16
            };
            let t = HostTensor::from_f32(vec![n, k], w.clone())
                .ok()?
                .to_dtype(dtype);
            (
                LinearWeight::Dense(Arc::new(b.upload_matrix(&t, dtype).ok()?)),
                ActSpec::NONE,
            )
        }
        Kind::W8A8 | Kind::Fp8 => {
            let dtype = if matches!(kind, Kind::W8A8) {
                QDType::Int8
            } else {
                QDType::Fp8E4M3
            };
            let q = quant(dtype, WeightScope::PerChannel)?;
            let act = ActSpec {
                policy: ActQuant::Dynamic,
                dtype,
                symmetric: true,
            };
            (LinearWeight::Quant(b.upload_quant(&q, n, k).ok()?), act)
        }
        Kind::W4A16 => {
            let q = quant(QDType::Int4, WeightScope::PerGroup(128))?;
            (
                LinearWeight::Quant(b.upload_quant(&q, n, k).ok()?),
                ActSpec::NONE,
            )
        }
    };
    Some(Linear {
        name: format!("bench.{}", kind.name()),
        in_features: k,
        out_features: n,
        weight,
        bias: None,
        act,
    })
}

/// One value back to the host: on a GPU this waits for the queued work, so a timed call
/// includes the kernel, not just its launch.
fn sync<B: Backend>(b: &B, buf: &B::Buf) {
    let mut one = [0f32];
    b.read(buf, 0, &mut one).expect("read");
}

/// Prefill-shaped linears (`rows` tokens, every shape and kind) under `group`: how one kernel
/// family compares with another on the same machine.
pub fn prefill_linears<B: Backend>(c: &mut Criterion, group: &str, b: &B, rows: usize) {
    let mut rng = Rng::new(7);
    let mut g = c.benchmark_group(group);
    for &(n, k) in &SHAPES {
        let x = b.upload(&rng.normals(rows * k, 1.0)).expect("upload");
        let mut out = b.alloc(rows * n).expect("alloc");
        for kind in Kind::ALL {
            let Some(lin) = linear_of(b, kind, n, k, &mut rng) else {
                continue;
            };
            g.throughput(Throughput::Elements(2 * (rows * n * k) as u64));
            g.bench_with_input(
                BenchmarkId::new(kind.name(), format!("{n}x{k}")),
                &lin,
                |it, lin| {
                    it.iter(|| {
                        b.linear(&mut out, &x, lin, rows, Phase::Prefill)
                            .expect("linear");
                        sync(b, &out);
                    })
                },
            );
        }
    }
    g.finish();
}

/// The benchmarks of `b` under `device` (e.g. "cpu", "cuda").
pub fn backend_benches<B: Backend>(c: &mut Criterion, device: &str, b: &B) {
    let mut rng = Rng::new(7);
    // the machine's copy bandwidth, the ceiling of every decode-shaped call
    {
        let n = 64 << 20;
        let src = b.upload(&vec![1f32; n / 4]).expect("upload");
        let mut dst = b.alloc(n / 4).expect("alloc");
        let mut g = c.benchmark_group(format!("{device}/copy"));
        g.throughput(Throughput::Bytes(2 * n as u64));
        g.bench_function("64MiB", |it| {
            it.iter(|| {
                b.copy(&mut dst, 0, &src, 0, n / 4).expect("copy");
                sync(b, &dst);
            })
        });
        g.finish();
    }
    for &m in &ROWS {
        let phase = if m == 1 {
            Phase::Decode
        } else {
            Phase::Prefill
        };
        let mut g = c.benchmark_group(format!("{device}/linear/rows{m}"));
        for &(n, k) in &SHAPES {
            let x = b.upload(&rng.normals(m * k, 1.0)).expect("upload");
            let mut out = b.alloc(m * n).expect("alloc");
            for kind in Kind::ALL {
                let Some(lin) = linear_of(b, kind, n, k, &mut rng) else {
                    eprintln!("{device}: {} not supported here, skipped", kind.name());
                    continue;
                };
                if b.linear(&mut out, &x, &lin, m, phase).is_err() {
                    eprintln!(
                        "{device}: {} linear not supported here, skipped",
                        kind.name()
                    );
                    continue;
                }
                // decode streams the weight once: GB/s against the copy; prefill: FLOP/s
                g.throughput(if m == 1 {
                    Throughput::Bytes(kind.weight_bytes(n, k))
                } else {
                    Throughput::Elements(2 * (m * n * k) as u64)
                });
                g.bench_with_input(
                    BenchmarkId::new(kind.name(), format!("{n}x{k}")),
                    &lin,
                    |it, lin| {
                        it.iter(|| {
                            b.linear(&mut out, &x, lin, m, phase).expect("linear");
                            sync(b, &out);
                        })
                    },
                );
            }
        }
        g.finish();
    }
    // the norm over a prefill chunk: bytes read and written
    {
        let (rows, dim) = (128, 4096);
        let x = b.upload(&rng.normals(rows * dim, 1.0)).expect("upload");
        let w = b.upload(&rng.normals(dim, 1.0)).expect("upload");
        let mut out = b.alloc(rows * dim).expect("alloc");
        let mut g = c.benchmark_group(format!("{device}/rms_norm"));
        g.throughput(Throughput::Bytes(8 * (rows * dim) as u64));
        g.bench_function(format!("{rows}x{dim}"), |it| {
            it.iter(|| {
                b.rms_norm(&mut out, &x, &w, rows, dim, 1e-5).expect("norm");
                sync(b, &out);
            })
        });
        g.finish();
    }
}
