//! Kernel compilation: NVRTC straight to CUBIN for one architecture, with a disk cache.
//!
//! - CUBIN, not PTX, so ptxas checks inline PTX, registers and spills at build time and the
//!   driver never JITs; cudarc only yields PTX, so this calls NVRTC directly.
//! - The cache key hashes the source, the options, the NVRTC version and the architecture.
//! - `--ptxas-options=-v` puts each kernel's registers and spills in the log (`KernelStats`).

use super::device::nvrtc_version;
use crate::error::{Error, Result};
use cudarc::nvrtc::{result as nres, sys as nsys};
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Options every kernel is compiled with (besides the architecture).
pub const BASE_OPTIONS: &[&str] = &[
    "--std=c++17",
    "--ptxas-options=-v",
    "-default-device",
    "--extra-device-vectorization",
];

/// Resources ptxas reported for one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub name: String,
    pub registers: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

/// A compiled module.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub cubin: Vec<u8>,
    pub log: String,
    pub stats: Vec<KernelStats>,
    /// Whether it came from the disk cache.
    pub cached: bool,
}

fn log_of(prog: nsys::nvrtcProgram) -> String {
    // SAFETY: `prog` is a live program created by create_program.
    match unsafe { nres::get_program_log(prog) } {
        Ok(chars) => {
            let bytes: Vec<u8> = chars
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Err(e) => format!("(no log: {e:?})"),
    }
}

/// Compile `source` (named `name` in messages) to a CUBIN for `arch` (e.g. `sm_90a`).
pub fn compile_cubin(source: &str, name: &str, arch: &str) -> Result<Compiled> {
    nvrtc_version()?; // a clear error when NVRTC is absent, before cudarc would panic
    let src =
        CString::new(source).map_err(|_| Error::Cuda(format!("{name}: NUL byte in the source")))?;
    let cname =
        CString::new(name).map_err(|_| Error::Cuda(format!("{name}: NUL byte in the name")))?;
    let prog = nres::create_program(&src, Some(&cname))
        .map_err(|e| Error::Cuda(format!("{name}: nvrtcCreateProgram: {e:?}")))?;
    let mut opts: Vec<String> = BASE_OPTIONS.iter().map(|s| s.to_string()).collect();
    opts.push(format!("--gpu-architecture={arch}"));
    // SAFETY: `prog` is live; the options are plain strings without NUL bytes.
    let compiled = unsafe { nres::compile_program(prog, &opts) };
    let log = log_of(prog);
    let cubin = compiled
        .map_err(|e| {
            Error::Cuda(format!(
                "{name} for {arch} does not compile ({e:?}):\n{log}"
            ))
        })
        .and_then(|()| {
            let mut size = 0usize;
            // SAFETY: `prog` compiled successfully; size is a valid out pointer.
            unsafe { nsys::nvrtcGetCUBINSize(prog, &mut size) }
                .result()
                .map_err(|e| Error::Cuda(format!("{name}: nvrtcGetCUBINSize: {e:?}")))?;
            let mut buf = vec![0u8; size];
            // SAFETY: buf holds exactly the size NVRTC reported.
            unsafe { nsys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast()) }
                .result()
                .map_err(|e| Error::Cuda(format!("{name}: nvrtcGetCUBIN: {e:?}")))?;
            Ok(buf)
        });
    // SAFETY: `prog` is live and not used after this.
    let _ = unsafe { nres::destroy_program(prog) };
    let cubin = cubin?;
    if cubin.is_empty() {
        return Err(Error::Cuda(format!(
            "{name} for {arch}: NVRTC produced an empty CUBIN"
        )));
    }
    Ok(Compiled {
        stats: parse_ptxas_log(&log),
        cubin,
        log,
        cached: false,
    })
}

/// Registers and spills per kernel from `ptxas -v` output: "Compiling entry function 'k'",
/// then "N bytes stack frame, S bytes spill stores, L bytes spill loads" and "Used R registers".
pub fn parse_ptxas_log(log: &str) -> Vec<KernelStats> {
    let mut out: Vec<KernelStats> = Vec::new();
    let number_before = |line: &str, word: &str| -> Option<u32> {
        let i = line.find(word)?;
        line[..i]
            .split(|c: char| !c.is_ascii_digit())
            .rfind(|s| !s.is_empty())?
            .parse()
            .ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("entry function '").nth(1) {
            out.push(KernelStats {
                name: rest.split('\'').next().unwrap_or_default().to_string(),
                ..Default::default()
            });
        } else if let Some(k) = out.last_mut() {
            if let Some(r) = number_before(line, " registers") {
                k.registers = r;
            }
            if let Some(s) = number_before(line, " bytes spill stores") {
                k.spill_stores = s;
            }
            if let Some(l) = number_before(line, " bytes spill loads") {
                k.spill_loads = l;
            }
        }
    }
    out
}

/// FNV-1a, 64 bit: a hash that stays the same across builds and Rust versions (the standard
/// library's `DefaultHasher` does not promise that), for cache file names.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        for &b in *p {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        h = (h ^ 0xff).wrapping_mul(0x0000_0100_0000_01b3); // part separator
    }
    h
}

/// CUBINs on disk, one file per (module, arch, key).
#[derive(Clone, Debug)]
pub struct KernelCache {
    pub dir: PathBuf,
}

impl KernelCache {
    /// `$FERROQ_KERNEL_CACHE`, else `$XDG_CACHE_HOME/ferroq/kernels`, else
    /// `~/.cache/ferroq/kernels`.
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("FERROQ_KERNEL_CACHE") {
            return PathBuf::from(d);
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("ferroq").join("kernels")
    }

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        KernelCache { dir: dir.into() }
    }

    /// The file a module's CUBIN is cached under.
    pub fn path_for(&self, name: &str, arch: &str, source: &str) -> Result<PathBuf> {
        let (major, minor) = nvrtc_version()?;
        let version = format!("{major}.{minor}");
        let key = fnv1a(&[
            source.as_bytes(),
            BASE_OPTIONS.join(" ").as_bytes(),
            version.as_bytes(),
            arch.as_bytes(),
        ]);
        Ok(self.dir.join(format!("{name}-{arch}-{key:016x}.cubin")))
    }

    /// The cached CUBIN, or compile and store it (atomically: a temporary file, then rename).
    pub fn get_or_compile(&self, source: &str, name: &str, arch: &str) -> Result<Compiled> {
        let path = self.path_for(name, arch, source)?;
        if let Ok(cubin) = std::fs::read(&path) {
            if !cubin.is_empty() {
                tracing::debug!(
                    "kernels: {name} for {arch} from the cache ({})",
                    path.display()
                );
                return Ok(Compiled {
                    cubin,
                    log: String::new(),
                    stats: Vec::new(),
                    cached: true,
                });
            }
        }
        let t = std::time::Instant::now();
        let c = compile_cubin(source, name, arch)?;
        tracing::debug!(
            "kernels: compiled {name} for {arch} in {:.2}s",
            t.elapsed().as_secs_f64()
        );
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let tmp = path.with_extension(format!("partial{}", std::process::id()));
        std::fs::write(&tmp, &c.cubin).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        Ok(c)
    }

    /// Cached CUBIN files and their total size.
    pub fn usage(&self) -> (usize, u64) {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "cubin"))
                    .fold((0, 0), |(n, b), e| {
                        (n + 1, b + e.metadata().map_or(0, |m| m.len()))
                    })
            })
            .unwrap_or((0, 0))
    }
}
