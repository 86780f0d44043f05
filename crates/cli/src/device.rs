//! The one place a device is chosen (design rule: the edge picks the device).

use anyhow::{bail, Result};

use crate::args::{CudaConvArg, DeviceArgs, Toggle};

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
/// GPU backend for training without kernel fusion (`--cuda-fusion off`): convolutions can then
/// run with a fixed kernel strategy (`--cuda-conv`).
#[cfg(feature = "cuda")]
pub type GpuTrainPlain = burn::backend::Autodiff<resnet_kernels::backends::CudaPlain>;
/// GPU backend for inference without kernel fusion.
#[cfg(feature = "cuda")]
pub type GpuInferPlain = resnet_kernels::backends::CudaPlain;

/// What the flags asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selected {
    /// The flex CPU backend.
    Cpu,
    /// A CUDA device.
    #[cfg(feature = "cuda")]
    Gpu {
        /// The device index.
        index: usize,
        /// Burn's fusion backend (true) or the plain CUDA backend.
        fusion: bool,
    },
}

impl Selected {
    /// The device as the coordinator and the logs name it: `cpu` or `cuda:N`.
    pub fn name(self) -> String {
        match self {
            Selected::Cpu => "cpu".into(),
            #[cfg(feature = "cuda")]
            Selected::Gpu { index, .. } => format!("cuda:{index}"),
        }
    }
}

/// Resolves `--gpu`/`--cpu`. A `--gpu` request fails with an explanation, never a panic, when
/// the build or the machine cannot serve it.
pub fn select(args: &DeviceArgs) -> Result<Selected> {
    match args.gpu {
        None => Ok(Selected::Cpu),
        #[cfg(feature = "cuda")]
        Some(n) => {
            cuda_driver_present()?;
            crate::kernel_cache::configure(args.kernel_cache.as_deref(), n)?;
            let (fusion, conv) = cuda_flags(args.cuda_conv, args.cuda_fusion)?;
            use crate::args::CudaBnArg;
            if let (true, Some(bn @ (CudaBnArg::Cudnn | CudaBnArg::CudnnFused))) =
                (fusion, args.cuda_bn)
            {
                let name = if bn == CudaBnArg::Cudnn {
                    "cudnn"
                } else {
                    "cudnn-fused"
                };
                bail!("--cuda-bn {name} needs --cuda-fusion off (and a --cuda-conv other than autotune)");
            }
            if fusion && args.cuda_optim == Some(crate::args::CudaOptimArg::Fused) {
                bail!("--cuda-optim fused needs --cuda-fusion off (and a --cuda-conv other than autotune)");
            }
            if args.cuda_layout == Some(crate::args::CudaLayoutArg::Nhwc)
                && crate::kernels::cuda_conv(conv) != resnet_kernels::CudaConv::Cudnn
            {
                bail!(
                    "--cuda-layout nhwc is for cuDNN's convolutions (--cuda-conv cudnn), not --cuda-conv {}",
                    crate::kernels::cuda_conv(conv).name()
                );
            }
            tracing::info!(
                gpu = n,
                fusion,
                conv = crate::kernels::cuda_conv(conv).name(),
                "CUDA backend selected"
            );
            Ok(Selected::Gpu { index: n, fusion })
        }
        #[cfg(not(feature = "cuda"))]
        Some(n) => bail!(
            "--gpu {n}: this binary was built without CUDA support; rebuild with `--features cuda` or use --cpu"
        ),
    }
}

/// `--cuda-fusion` and `--cuda-conv`, checked against each other: (fusion on, kernels).
/// Defaults: `crate::kernels::DEFAULT_CUDA_CONV`, and fusion only with `autotune` (the fixed
/// kernels need the plain backend).
pub fn cuda_flags(
    conv: Option<CudaConvArg>,
    fusion: Option<Toggle>,
) -> Result<(bool, CudaConvArg)> {
    let conv = conv.unwrap_or(crate::kernels::DEFAULT_CUDA_CONV);
    let fusion = match fusion {
        Some(t) => t == Toggle::On,
        None => conv == CudaConvArg::Autotune,
    };
    if fusion && conv != CudaConvArg::Autotune {
        let name = crate::kernels::cuda_conv(conv).name();
        bail!(
            "--cuda-conv {name} needs --cuda-fusion off: Burn's fusion backend always autotunes its convolutions"
        );
    }
    Ok((fusion, conv))
}

/// GPUs this process may use, for `worker --gpus all`, without loading CUDA: the entries of
/// `CUDA_VISIBLE_DEVICES` when set, else the NVIDIA device nodes (`/dev/nvidiaN`; a container
/// sees only the GPUs given to it, which CUDA numbers from 0).
pub fn cuda_device_count() -> Result<usize> {
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        if !v.trim().is_empty() {
            return Ok(v.split(',').filter(|d| !d.trim().is_empty()).count());
        }
    }
    let n = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name().to_str().is_some_and(|n| {
                        n.strip_prefix("nvidia")
                            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
                    })
                })
                .count()
        })
        .unwrap_or(0);
    if n == 0 {
        bail!("--gpus all: no NVIDIA GPU (/dev/nvidiaN) on this machine; list GPU numbers instead (with --cpu for CPU workers)");
    }
    Ok(n)
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
        $crate::with_backend!(
            $sel,
            $crate::device::CpuTrain,
            $crate::device::GpuTrain,
            $crate::device::GpuTrainPlain,
            |$B, $dev| $body
        )
    };
}

/// Runs `$body` with `$B` bound to the inference backend and `$dev` to its device.
#[macro_export]
macro_rules! with_infer_backend {
    ($sel:expr, |$B:ident, $dev:ident| $body:expr) => {
        $crate::with_backend!(
            $sel,
            $crate::device::CpuInfer,
            $crate::device::GpuInfer,
            $crate::device::GpuInferPlain,
            |$B, $dev| $body
        )
    };
}

/// The body of [`with_train_backend`] and [`with_infer_backend`]: `$cpu`, `$gpu` (fusion) or
/// `$gpu_plain` as `$B`, by what [`Selected`] says.
#[doc(hidden)]
#[macro_export]
macro_rules! with_backend {
    ($sel:expr, $cpu:ty, $gpu:ty, $gpu_plain:ty, |$B:ident, $dev:ident| $body:expr) => {
        match $sel {
            $crate::device::Selected::Cpu => {
                type $B = $cpu;
                let $dev = burn::backend::flex::FlexDevice::default();
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::device::Selected::Gpu { index, fusion } => {
                let $dev = burn::backend::cuda::CudaDevice::new(index);
                if fusion {
                    type $B = $gpu;
                    $body
                } else {
                    type $B = $gpu_plain;
                    $body
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_flags_default_to_cudnn_without_fusion_and_reject_fusion_with_fixed_kernels() {
        use CudaConvArg::*;
        assert_eq!(cuda_flags(None, None).expect("default"), (false, Cudnn));
        assert_eq!(
            cuda_flags(Some(Autotune), None).expect("autotune"),
            (true, Autotune)
        );
        assert_eq!(
            cuda_flags(Some(Autotune), Some(Toggle::Off)).expect("plain autotune"),
            (false, Autotune)
        );
        assert_eq!(
            cuda_flags(Some(Direct), Some(Toggle::Off)).expect("direct"),
            (false, Direct)
        );
        for (kind, name) in [(Gemm, "gemm"), (Tuned, "tuned"), (Cudnn, "cudnn")] {
            let err = cuda_flags(Some(kind), Some(Toggle::On))
                .expect_err("fixed kernels with fusion")
                .to_string();
            let want = format!("--cuda-conv {name} needs --cuda-fusion off");
            assert!(err.contains(&want), "{err}");
        }
        assert_eq!(
            cuda_flags(Some(Tuned), None).expect("tuned"),
            (false, Tuned)
        );
        assert!(cuda_flags(None, Some(Toggle::On)).is_err());
    }
}
