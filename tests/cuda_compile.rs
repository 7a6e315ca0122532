//! The CI proof that every CUDA kernel builds, without a GPU: NVRTC 13.0 (from PyPI, installed
//! by scripts/test.sh) compiles each `kernels/*.cu` module to CUBIN for sm_80, sm_89 and sm_90a;
//! ptxas must accept it, every kernel of the typed table must be in it, none may spill, and the
//! registers per kernel are printed. Also: the disk cache, the ptxas log parser, and the clear
//! error `--device cuda` gives on a machine without a driver.

use ferroq::backend::cuda::device;
use ferroq::backend::cuda::kernels::{Kernel, Module, CI_ARCHES};
use ferroq::backend::cuda::nvrtc::{compile_cubin, parse_ptxas_log, KernelCache};

fn require_nvrtc() {
    assert!(
        device::nvrtc_present(),
        "libnvrtc.so.13 is not loadable: run `bash scripts/test.sh` (it installs cuda-toolkit[nvrtc]==13.0.2 into models/cache/venv and sets LD_LIBRARY_PATH)"
    );
}

#[test]
fn every_kernel_compiles_to_cubin_for_ampere_ada_and_hopper() {
    require_nvrtc();
    let (major, minor) = device::nvrtc_version().expect("version");
    println!("NVRTC {major}.{minor}");
    assert_eq!(
        major, 13,
        "CI pins NVRTC 13.0 (13.5 emits PTX a 580 driver cannot load)"
    );
    println!("| module | arch | kernel | registers | spill stores | spill loads |\n|---|---|---|---|---|---|");
    for m in Module::ALL {
        for arch in CI_ARCHES {
            let c = compile_cubin(&m.source(), m.name(), arch).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                &c.cubin[..4],
                b"\x7fELF",
                "{} {arch}: not an ELF CUBIN",
                m.name()
            );
            for k in m.kernels() {
                let s = c
                    .stats
                    .iter()
                    .find(|s| s.name == k.symbol())
                    .unwrap_or_else(|| {
                        panic!(
                            "{k:?} ({}) missing from {} for {arch}:\n{}",
                            k.symbol(),
                            m.name(),
                            c.log
                        )
                    });
                println!(
                    "| {} | {arch} | {} | {} | {} | {} |",
                    m.name(),
                    s.name,
                    s.registers,
                    s.spill_stores,
                    s.spill_loads
                );
                assert!(
                    s.registers > 0,
                    "{}: no register count parsed:\n{}",
                    s.name,
                    c.log
                );
                assert_eq!(
                    (s.spill_stores, s.spill_loads),
                    (0, 0),
                    "{} spills on {arch}",
                    s.name
                );
            }
            assert_eq!(
                c.stats.len(),
                m.kernels().count(),
                "{}: kernels outside the typed table:\n{}",
                m.name(),
                c.log
            );
        }
    }
    // every kernel belongs to a module that was compiled, and indexes the table in order
    for (i, k) in Kernel::ALL.into_iter().enumerate() {
        assert!(Module::ALL.contains(&k.module()));
        assert_eq!(k.index(), i);
    }
}

#[test]
fn a_compile_error_names_the_module_and_line() {
    require_nvrtc();
    let bad = "extern \"C\" __global__ void k(float* x) { x[0] = undefined_thing; }";
    let e = compile_cubin(bad, "broken", "sm_80").expect_err("must not compile");
    let msg = e.to_string();
    assert!(
        msg.contains("broken for sm_80 does not compile") && msg.contains("undefined_thing"),
        "{msg}"
    );
    // an instruction the architecture lacks is caught by ptxas (CUBIN), not silently accepted
    let wgmma = "extern \"C\" __global__ void k() { asm volatile(\"wgmma.fence.sync.aligned;\"); }";
    assert!(compile_cubin(wgmma, "hopper_only", "sm_80").is_err());
    assert!(compile_cubin(wgmma, "hopper_only", "sm_90a").is_ok());
}

#[test]
fn the_disk_cache_compiles_once() {
    require_nvrtc();
    let dir = tempfile::tempdir().expect("tmp");
    let cache = KernelCache::new(dir.path());
    let src = Module::Activation.source();
    let first = cache
        .get_or_compile(&src, "activation", "sm_89")
        .expect("compile");
    assert!(!first.cached);
    let again = cache
        .get_or_compile(&src, "activation", "sm_89")
        .expect("cached");
    assert!(again.cached);
    assert_eq!(first.cubin, again.cubin);
    assert_eq!(cache.usage().0, 1);
    // another architecture or source is another entry
    let other = cache
        .get_or_compile(&src, "activation", "sm_80")
        .expect("compile");
    assert!(!other.cached);
    let changed = format!("{src}\n// changed");
    assert_ne!(
        cache
            .path_for("activation", "sm_89", &changed)
            .expect("path"),
        cache.path_for("activation", "sm_89", &src).expect("path")
    );
    assert_eq!(cache.usage().0, 2);
}

#[test]
fn ptxas_log_parsing() {
    let log = "ptxas info    : 0 bytes gmem\nptxas info    : Compiling entry function 'rms_norm' for 'sm_90a'\nptxas info    : Function properties for rms_norm\n    0 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\nptxas info    : Used 18 registers, used 1 barriers, 128 bytes smem, 388 bytes cmem[0]\nptxas info    : Compiling entry function 'add_rms_norm' for 'sm_90a'\nptxas info    : Used 24 registers, used 1 barriers\n";
    let s = parse_ptxas_log(log);
    assert_eq!(s.len(), 2);
    assert_eq!(
        (
            s[0].name.as_str(),
            s[0].registers,
            s[0].spill_stores,
            s[0].spill_loads
        ),
        ("rms_norm", 18, 8, 12)
    );
    assert_eq!((s[1].name.as_str(), s[1].registers), ("add_rms_norm", 24));
}

#[test]
fn device_cuda_is_a_clear_error_without_a_driver() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferroq"))
        .args(["generate", "--device", "cuda", "-p", "hi", "-n", "1", "-m"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/cache/SmolLM2-135M-Instruct.Q4_1.gguf"
        ))
        .output()
        .expect("run ferroq");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!err.contains("panicked"), "{err}");
    if device::driver_present() {
        // a GPU machine: the device is found, and the missing backend is named
        assert!(err.contains("CUDA backend"), "{err}");
    } else {
        assert!(
            err.contains("no CUDA driver: libcuda.so was not found"),
            "{err}"
        );
    }
}

/// The GEMM dispatch table by M (no GPU needed): decode-sized M takes each kind's GEMV, larger
/// M the tiled kernel, odd k the fallbacks; every tile's launch covers the output exactly once
/// per block column / row.
#[test]
fn gemm_dispatch_by_m_and_tile_geometry() {
    use ferroq::backend::cuda::tiles::{self, GemmKind, TensorCores};
    let k = 4096;
    for tc in [TensorCores::MmaSync, TensorCores::Wgmma] {
        let wg = tc == TensorCores::Wgmma;
        for (kind, last_gemv, gemv, tiled) in [
            (GemmKind::Bf16, 8, Kernel::GemvBf16, Kernel::GemmBf16Tc),
            (
                GemmKind::W8a8,
                16,
                Kernel::GemvW8a8,
                if wg {
                    Kernel::GemmW8a8Wg
                } else {
                    Kernel::GemmW8a8
                },
            ),
            (
                GemmKind::Fp8,
                8,
                Kernel::GemvFp8,
                if wg {
                    Kernel::GemmFp8Wg
                } else {
                    Kernel::GemmFp8
                },
            ),
            (
                GemmKind::W4a16 { group: 128 },
                8,
                Kernel::GemvW4a16,
                Kernel::GemmW4a16Tc,
            ),
        ] {
            assert_eq!(kind.pick(1, k, tc).kernel, gemv, "{kind:?} {tc:?} M=1");
            assert_eq!(
                kind.pick(last_gemv, k, tc).kernel,
                gemv,
                "{kind:?} {tc:?} M={last_gemv}"
            );
            assert_eq!(
                kind.pick(last_gemv + 1, k, tc).kernel,
                tiled,
                "{kind:?} {tc:?} past the GEMV"
            );
            assert_eq!(
                kind.pick(8192, k, tc).kernel,
                tiled,
                "{kind:?} {tc:?} M=8192"
            );
        }
        // k the vector loads or 32-value stages cannot take: the CUDA-core tiles
        assert_eq!(GemmKind::Bf16.pick(1, 35, tc).kernel, Kernel::GemmBf16);
        assert_eq!(GemmKind::Bf16.pick(64, 36, tc).kernel, Kernel::GemmBf16);
        for (group, k) in [(48, 4800), (128, 4112)] {
            for m in [1, 512] {
                assert_eq!(
                    GemmKind::W4a16 { group }.pick(m, k, tc).kernel,
                    Kernel::GemmW4a16,
                    "g{group} k{k} M={m}"
                );
            }
        }
    }
    // the host's launch size is the kernels' own: common.cuh stages WG_STAGES x (a, b) tiles
    let common = include_str!("../kernels/common.cuh");
    let define = |name: &str| -> usize {
        common
            .lines()
            .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("#define {name} in common.cuh"))
    };
    assert_eq!(
        2 * define("WG_STAGES") * define("WG_TILE") * define("WG_KB"),
        tiles::WG_SMEM
    );
    // the wgmma tiles stage more than the default 48 KiB of shared memory: opted in by
    // Gpu::function; everything else takes none
    for t in tiles::TILES {
        let wg = matches!(t.kernel, Kernel::GemmW8a8Wg | Kernel::GemmFp8Wg);
        assert_eq!(t.smem, if wg { tiles::WG_SMEM } else { 0 }, "{t:?}");
        let cfg = t.kernel.gemm_launch(3, 3).expect("a GEMM");
        assert_eq!(cfg.shared_mem_bytes as usize, t.smem, "{t:?}");
    }
    for t in tiles::TILES {
        let (m, n) = (1000, 1000);
        let cfg = t.kernel.gemm_launch(m, n).expect("a GEMM");
        assert_eq!(cfg.block_dim.0, t.threads);
        assert_eq!(
            cfg.block_dim.0 as usize,
            32 * t.warps.0 * t.warps.1,
            "{t:?}"
        );
        assert!(cfg.grid_dim.0 as usize * t.block_n >= n, "{t:?}");
        assert!((cfg.grid_dim.0 as usize - 1) * t.block_n < n, "{t:?}");
        let rows = if t.block_m == 0 {
            m
        } else {
            cfg.grid_dim.1 as usize * t.block_m
        };
        assert!(rows >= m, "{t:?}");
    }
    assert!(Kernel::RmsNorm.gemm_launch(1, 1).is_none());
}
