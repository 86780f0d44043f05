//! The one place a device is chosen (design rule: the edge picks the device).

use anyhow::{bail, Result};

use crate::args::DeviceArgs;

/// CPU backend for training (flex + autodiff).
pub type CpuTrain = burn::backend::Autodiff<burn::backend::Flex>;
/// CPU backend for inference.
pub type CpuInfer = burn::backend::Flex;
/// GPU backend for training.
#[cfg(feature = "cuda")]
pub type GpuTrain = burn::backend::Autodiff<burn::backend::Cuda>;
/// GPU backend for inference.
#[cfg(feature = "cuda")]
pub type GpuInfer = burn::backend::Cuda;

/// What the flags asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selected {
    /// The flex CPU backend.
    Cpu,
    /// CUDA device N.
    #[cfg(feature = "cuda")]
    Gpu(usize),
}

/// Resolves `--gpu`/`--cpu`. A `--gpu` request fails with an explanation, never a panic, when
/// the build or the machine cannot serve it.
pub fn select(args: &DeviceArgs) -> Result<Selected> {
    match args.gpu {
        None => Ok(Selected::Cpu),
        #[cfg(feature = "cuda")]
        Some(n) => {
            cuda_driver_present()?;
            Ok(Selected::Gpu(n))
        }
        #[cfg(not(feature = "cuda"))]
        Some(n) => bail!(
            "--gpu {n}: this binary was built without CUDA support; rebuild with `--features cuda` or use --cpu"
        ),
    }
}

/// Burn's CUDA runtime panics in a background thread when the driver is missing, so look for
/// it first: the device node and the driver library.
#[cfg(feature = "cuda")]
fn cuda_driver_present() -> Result<()> {
    if !std::path::Path::new("/dev/nvidiactl").exists() {
        bail!("no CUDA driver found: /dev/nvidiactl does not exist (no NVIDIA GPU or driver on this machine); use --cpu");
    }
    let mut dirs: Vec<String> = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .map(String::from)
        .collect();
    dirs.extend(
        [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
            "/usr/local/nvidia/lib64",
            "/usr/local/cuda/compat",
        ]
        .map(String::from),
    );
    let found = dirs
        .iter()
        .filter(|d| !d.is_empty() && !d.contains("stubs"))
        .any(|d| std::path::Path::new(d).join("libcuda.so.1").exists());
    if !found {
        bail!("no CUDA driver found: libcuda.so.1 is not in LD_LIBRARY_PATH or the system library directories; use --cpu");
    }
    Ok(())
}

/// Runs `$body` with `$B` bound to the training backend and `$dev` to its device.
#[macro_export]
macro_rules! with_train_backend {
    ($sel:expr, |$B:ident, $dev:ident| $body:expr) => {
        match $sel {
            $crate::device::Selected::Cpu => {
                type $B = $crate::device::CpuTrain;
                let $dev = burn::backend::flex::FlexDevice::default();
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::device::Selected::Gpu(n) => {
                type $B = $crate::device::GpuTrain;
                let $dev = burn::backend::cuda::CudaDevice::new(n);
                $body
            }
        }
    };
}

/// Runs `$body` with `$B` bound to the inference backend and `$dev` to its device.
#[macro_export]
macro_rules! with_infer_backend {
    ($sel:expr, |$B:ident, $dev:ident| $body:expr) => {
        match $sel {
            $crate::device::Selected::Cpu => {
                type $B = $crate::device::CpuInfer;
                let $dev = burn::backend::flex::FlexDevice::default();
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::device::Selected::Gpu(n) => {
                type $B = $crate::device::GpuInfer;
                let $dev = burn::backend::cuda::CudaDevice::new(n);
                $body
            }
        }
    };
}
