//! Finding a CUDA device through the driver API loaded at run time (cudarc `dynamic-loading`).
//!
//! - Whether libcuda and libnvrtc are present, how many devices there are, and each one's name,
//!   compute capability, memory and the CUBIN architecture ferroq compiles for it.
//! - cudarc panics when it has to load an absent library, so every entry point checks presence
//!   first and turns absence into an `Error::Cuda` naming what is missing.

use crate::error::{Error, Result};
use cudarc::driver::{result as drv, sys as dsys};

/// What `ferroq info` and the backend need to know about one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// (major, minor) compute capability.
    pub capability: (i32, i32),
    pub total_mem: usize,
    /// The `--gpu-architecture` CUBINs are built for (`sm_90a` on Hopper, to reach wgmma).
    pub arch: String,
    /// The driver's CUDA version, e.g. 13000.
    pub driver_version: i32,
}

fn cuda_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("{what}: {e:?}"))
}

/// The CUBIN architecture for a compute capability: Hopper gets the arch-specific `sm_90a`.
pub fn arch_for(capability: (i32, i32)) -> String {
    match capability {
        (9, 0) => "sm_90a".to_string(),
        (major, minor) => format!("sm_{major}{minor}"),
    }
}

/// Whether the CUDA driver library can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { dsys::is_culib_present() }
}

/// Whether NVRTC can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's (major, minor) version.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_present() {
        return Err(Error::Cuda(
            "NVRTC (libnvrtc.so.13) was not found: install the CUDA 13.0 toolkit, or `pip install \"cuda-toolkit[nvrtc]==13.0.2\"` and put its nvidia/cu13/lib on LD_LIBRARY_PATH".into(),
        ));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (checked above); both pointers are valid for writes.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| cuda_err("nvrtcVersion", e))?;
    Ok((major, minor))
}

/// Initialise the driver and count devices.
pub fn device_count() -> Result<usize> {
    if !driver_present() {
        return Err(Error::Cuda(
            "no CUDA driver: libcuda.so was not found (no NVIDIA driver on this machine); use --device cpu".into(),
        ));
    }
    drv::init().map_err(|e| cuda_err("cuInit (driver present, but no usable GPU?)", e))?;
    let n = drv::device::get_count().map_err(|e| cuda_err("cuDeviceGetCount", e))?;
    Ok(n.max(0) as usize)
}

/// Describe device `ordinal`.
pub fn probe(ordinal: usize) -> Result<DeviceInfo> {
    let count = device_count()?;
    if ordinal >= count {
        return Err(Error::Cuda(format!(
            "cuda:{ordinal} was asked for but this machine has {count} CUDA device(s)"
        )));
    }
    let dev = drv::device::get(ordinal as i32).map_err(|e| cuda_err("cuDeviceGet", e))?;
    let name = drv::device::get_name(dev).map_err(|e| cuda_err("cuDeviceGetName", e))?;
    let attr = |a| {
        // SAFETY: `dev` came from cuDeviceGet above.
        unsafe { drv::device::get_attribute(dev, a) }
            .map_err(|e| cuda_err("cuDeviceGetAttribute", e))
    };
    let capability = (
        attr(dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
        attr(dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
    );
    // SAFETY: as above.
    let total_mem =
        unsafe { drv::device::total_mem(dev) }.map_err(|e| cuda_err("cuDeviceTotalMem", e))?;
    let mut driver_version = 0;
    // SAFETY: the driver is loaded and initialised (device_count); the pointer is valid.
    unsafe { dsys::cuDriverGetVersion(&mut driver_version) }
        .result()
        .map_err(|e| cuda_err("cuDriverGetVersion", e))?;
    Ok(DeviceInfo {
        ordinal,
        name,
        capability,
        total_mem,
        arch: arch_for(capability),
        driver_version,
    })
}
