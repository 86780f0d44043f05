//! [`KernelChoice`]: which implementation runs each kernel, chosen once at the edge (the
//! binaries' flags and environment) and carried by the model, so nothing below the binaries
//! reads a flag, an environment variable or a process-wide switch.
//!
//! Every field names an implementation for one backend; a backend ignores the fields of the
//! others (the CPU path never looks at `cuda_conv`), so one value serves every device.

use std::str::FromStr;

use crate::precision::ConvPrecision;

/// Generates `name()` and `FromStr` for a fieldless enum from one table of names, so the flag
/// values, the error messages and the logs cannot drift apart.
macro_rules! named_enum {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in the order the help text lists them.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The name the flag, the environment variable and the logs use.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL.iter().copied().find(|v| v.name() == s).ok_or_else(|| {
                    let names: Vec<&str> = Self::ALL.iter().map(|v| v.name()).collect();
                    format!("unknown {} '{s}': expected {}", $what, names.join(", "))
                })
            }
        }
    };
}

/// How convolutions run on the CPU (Burn's flex backend, f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CpuConv {
    /// This crate's im2col + GEMM kernels ([`crate::conv::cpu`]) for every convolution.
    Gemm,
    /// The same kernels with every kernel tap in the column matrix, also the taps that read
    /// only padding (the same bits, slower on small maps; for A/B benchmarks).
    GemmAllTaps,
    /// Burn's own convolution (for A/B benchmarks and bisecting).
    Burn,
    /// The GEMM kernels, except that 3x3 stride-1 convolutions with outputs of at least 8x8
    /// run their forward pass (also folded evaluation) and input gradient as Winograd
    /// F(2x2, 3x3) ([`crate::conv::winograd`]): fewer multiplications, other rounding. Only
    /// where the AVX-512 GEMM runs (measured there); elsewhere the same as `Gemm`.
    #[default]
    Winograd,
}

named_enum!(CpuConv, "CPU convolution", {
    Gemm => "gemm",
    GemmAllTaps => "gemm-all-taps",
    Burn => "burn",
    Winograd => "winograd",
});

/// How BatchNorm (+ ReLU) runs on the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CpuBn {
    /// One fused autodiff node, two passes forward and two backward ([`crate::bn`]); in
    /// evaluation folded into the convolution before it ([`crate::conv::conv2d_bn_eval`]).
    #[default]
    Fused,
    /// As `Fused`, but in evaluation a pass of its own after the convolution (for A/B
    /// benchmarks and the folding's tests).
    Unfolded,
    /// The model's generic composition of Burn ops.
    Burn,
}

named_enum!(CpuBn, "CPU BatchNorm", {
    Fused => "fused",
    Unfolded => "unfolded",
    Burn => "burn",
});

impl CpuBn {
    /// Whether BatchNorm runs as this crate's fused kernels (folded or not).
    pub fn fused(self) -> bool {
        matches!(self, CpuBn::Fused | CpuBn::Unfolded)
    }
}

/// How the optimizer updates parameters on the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CpuOptim {
    /// One pass over each parameter, in place ([`crate::optim`]): Burn's arithmetic, the
    /// same bits.
    #[default]
    Fused,
    /// Burn's optimizers: a chain of whole-tensor ops per parameter (for A/B benchmarks).
    Burn,
}

named_enum!(CpuOptim, "CPU optimizer", {
    Fused => "fused",
    Burn => "burn",
});

/// How the optimizer updates parameters on the plain CUDA backend (`--cuda-optim`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CudaOptim {
    /// Burn's optimizers: a chain of whole-tensor kernels per parameter (the default until a
    /// GPU run has measured the fused update).
    #[default]
    Burn,
    /// One kernel per parameter ([`crate::optim::update_device_param`]), the state on the
    /// device; Burn's arithmetic up to fused multiply-adds.
    Fused,
}

named_enum!(CudaOptim, "CUDA optimizer", { Burn => "burn", Fused => "fused" });

/// How convolutions run on the plain (unfused) CUDA backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CudaConv {
    /// Burn's autotuned convolution (Burn's default, and the only one with fusion on).
    #[default]
    Autotune,
    /// Implicit GEMM on the tensor cores (cmma); the direct kernels for a shape it rejects.
    Gemm,
    /// Burn's direct convolution kernels: one simple kernel per pass, slowest at run time.
    Direct,
    /// Per shape and pass, the fastest of a few fixed candidates, `gemm` among them, timed once
    /// on the device and cached ([`crate::conv::tune_plan`]).
    Tuned,
    /// cuDNN (loaded at run time), each pass's algorithm measured once per shape and cached
    /// ([`crate::cudnn`]); `gemm` where cuDNN is absent or refuses a shape.
    Cudnn,
}

named_enum!(CudaConv, "CUDA convolution", {
    Autotune => "autotune",
    Gemm => "gemm",
    Direct => "direct",
    Tuned => "tuned",
    Cudnn => "cudnn",
});

/// How training-mode BatchNorm runs on the plain CUDA backend (`--cuda-bn`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CudaBn {
    /// The model's composition of Burn ops.
    #[default]
    Burn,
    /// cuDNN's batch-norm forward and backward as one autodiff node ([`crate::bn`]).
    Cudnn,
    /// As `Cudnn`, with the residual add and the ReLU after it inside the node (one cubecl
    /// kernel each way), the running statistics in one kernel, and evaluation-mode BatchNorm
    /// (+ add + ReLU) as one kernel; not the default until a GPU run has checked and timed it.
    CudnnFused,
}

named_enum!(CudaBn, "CUDA BatchNorm", {
    Burn => "burn",
    Cudnn => "cudnn",
    CudnnFused => "cudnn-fused",
});

impl CudaBn {
    /// Whether cuDNN runs the BatchNorm (with or without the fused add and ReLU).
    pub fn cudnn(self) -> bool {
        matches!(self, CudaBn::Cudnn | CudaBn::CudnnFused)
    }
}

/// How f32 products are computed (`--cuda-math`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CudaMath {
    /// TF32 tensor cores for f32 convolutions, as PyTorch's default
    /// (`torch.backends.cudnn.allow_tf32 = True`): operands rounded to 10 mantissa bits,
    /// accumulation in f32.
    #[default]
    Tf32,
    /// True f32 (FMA) arithmetic, as `allow_tf32 = False`: slower, no rounding of the operands.
    Strict,
}

named_enum!(CudaMath, "CUDA math", { Tf32 => "tf32", Strict => "strict" });

/// Memory layout of a 4-D activation or filter. Both describe the same logical `[N, C, H, W]`
/// (filters: `[K, C, R, S]`) tensor; only the strides differ. As a kernel choice
/// (`--cuda-layout`): the layout cuDNN's bf16 convolutions run in — the model's tensors stay
/// NCHW, and the convolution node converts its operands on the cast it makes anyway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CudaLayout {
    /// Channels before rows (Burn's and PyTorch's default).
    #[default]
    Nchw,
    /// Channels innermost (what cuDNN's tensor-core kernels prefer).
    Nhwc,
}

named_enum!(CudaLayout, "CUDA layout", { Nchw => "nchw", Nhwc => "nhwc" });

/// Which implementation runs each kernel. Built once by the binaries, handed to the model
/// (`ResNet::with_kernels`), and from there to every convolution, BatchNorm and matmul.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelChoice {
    /// Convolutions on the CPU.
    pub cpu_conv: CpuConv,
    /// BatchNorm on the CPU.
    pub cpu_bn: CpuBn,
    /// The optimizer's parameter update on the CPU.
    pub cpu_optim: CpuOptim,
    /// The optimizer's parameter update on the plain CUDA backend.
    pub cuda_optim: CudaOptim,
    /// Convolutions (and the classifier's matmuls) on the plain CUDA backend.
    pub cuda_conv: CudaConv,
    /// Training-mode BatchNorm on the plain CUDA backend.
    pub cuda_bn: CudaBn,
    /// With `cuda_conv = gemm`: strided input gradients as stride-1 implicit GEMM on the spread
    /// output gradient ([`crate::conv::dilate`]) instead of Burn's autotuned transposed
    /// convolution. Experimental, f32 only.
    pub cuda_spread_dgrad: bool,
    /// With `cuda_conv = gemm`: weight gradients as one batched matmul per kernel tap
    /// ([`crate::conv::wgrad`]). Experimental, f32 only.
    pub cuda_taps_wgrad: bool,
    /// The convolutions' arithmetic. The trainer sets it from the run's configuration.
    pub precision: ConvPrecision,
    /// With `cudnn`: TF32 tensor cores for f32 (PyTorch's default) or true f32.
    pub cuda_math: CudaMath,
    /// With `cudnn`: only algorithms that give the same bits on every run.
    pub deterministic: bool,
    /// With `cudnn`: the most workspace memory one pass's algorithm may use, in MiB.
    pub cudnn_workspace_mb: usize,
    /// With `cudnn` and bf16 convolutions: the layout cuDNN runs them in.
    pub cuda_layout: CudaLayout,
}

/// The default cap on cuDNN's workspace (`--cudnn-workspace-mb`, 1 GiB): generous on the
/// 80-141 GiB GPUs this targets, so the fastest algorithm is rarely excluded; the GPU check's
/// algorithm table shows what each shape actually uses.
pub const DEFAULT_CUDNN_WORKSPACE_MB: usize = 1024;

impl Default for KernelChoice {
    fn default() -> Self {
        Self {
            cpu_conv: CpuConv::default(),
            cpu_bn: CpuBn::default(),
            cpu_optim: CpuOptim::default(),
            cuda_optim: CudaOptim::default(),
            cuda_conv: CudaConv::default(),
            cuda_bn: CudaBn::default(),
            cuda_spread_dgrad: false,
            cuda_taps_wgrad: false,
            precision: ConvPrecision::default(),
            cuda_math: CudaMath::default(),
            cuda_layout: CudaLayout::default(),
            deterministic: false,
            cudnn_workspace_mb: DEFAULT_CUDNN_WORKSPACE_MB,
        }
    }
}

impl KernelChoice {
    /// `self` with the convolution arithmetic `p`.
    pub fn with_precision(self, p: ConvPrecision) -> Self {
        Self {
            precision: p,
            ..self
        }
    }

    /// Whether the plain CUDA backend runs fixed kernels (anything but Burn's autotuning).
    pub fn cuda_fixed(&self) -> bool {
        self.cuda_conv != CudaConv::Autotune
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_names_list_the_choices() {
        for v in CpuConv::ALL {
            assert_eq!(v.name().parse::<CpuConv>(), Ok(*v));
        }
        for v in CpuBn::ALL {
            assert_eq!(v.name().parse::<CpuBn>(), Ok(*v));
        }
        for v in CpuOptim::ALL {
            assert_eq!(v.name().parse::<CpuOptim>(), Ok(*v));
        }
        for v in CudaConv::ALL {
            assert_eq!(v.name().parse::<CudaConv>(), Ok(*v));
        }
        for v in CudaBn::ALL {
            assert_eq!(v.name().parse::<CudaBn>(), Ok(*v));
        }
        assert!(CudaBn::Cudnn.cudnn() && CudaBn::CudnnFused.cudnn() && !CudaBn::Burn.cudnn());
        for v in CudaOptim::ALL {
            assert_eq!(v.name().parse::<CudaOptim>(), Ok(*v));
        }
        let e = "fast".parse::<CudaConv>().expect_err("not a kernel");
        assert_eq!(
            e,
            "unknown CUDA convolution 'fast': expected autotune, gemm, direct, tuned, cudnn"
        );
    }

    #[test]
    fn the_default_is_the_libraries_own_behaviour() {
        let k = KernelChoice::default();
        assert_eq!(k.cpu_conv, CpuConv::Winograd);
        assert_eq!(k.cpu_bn, CpuBn::Fused);
        assert_eq!(k.cuda_conv, CudaConv::Autotune);
        assert_eq!(k.cuda_bn, CudaBn::Burn);
        assert_eq!(k.cuda_optim, CudaOptim::Burn);
        assert!(!k.cuda_fixed());
        assert_eq!(k.precision, ConvPrecision::F32);
        assert_eq!(k.cuda_math, CudaMath::Tf32);
        assert_eq!(k.cuda_layout, CudaLayout::Nchw);
        assert_eq!("nhwc".parse::<CudaLayout>(), Ok(CudaLayout::Nhwc));
        assert!("chwn".parse::<CudaLayout>().is_err());
        assert!(!k.deterministic);
        assert_eq!(k.cudnn_workspace_mb, DEFAULT_CUDNN_WORKSPACE_MB);
        let bf = k.with_precision(ConvPrecision::Bf16);
        assert_eq!(bf.precision, ConvPrecision::Bf16);
        assert_eq!(bf.cpu_conv, k.cpu_conv);
    }
}
