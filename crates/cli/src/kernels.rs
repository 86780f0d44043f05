//! The kernel choice (design rule: the edge picks the kernels). Built once per command from the
//! device flags and the environment overrides, then handed to the trainer or the model; nothing
//! below the binaries reads a flag or an environment variable to pick a kernel.
//!
//! | source | field | values |
//! |---|---|---|
//! | `--cuda-conv` / `RESNET_CUDA_CONV` | CUDA convolutions and classifier matmuls | cudnn (default), gemm, tuned, autotune, direct |
//! | `--cuda-bn` / `RESNET_CUDA_BN` | CUDA training-mode BatchNorm | cudnn (default with cudnn convolutions), cudnn-fused (+ residual add and ReLU in the node, running statistics and evaluation in one kernel each), burn (default otherwise) |
//! | `RESNET_CONV` | CPU convolutions | winograd (default; GEMM elsewhere), gemm, gemm-all-taps, burn |
//! | `RESNET_BN` | CPU BatchNorm | fused (default; folded into the convolution in evaluation), unfolded, burn |
//! | `RESNET_OPTIM` | CPU optimizer update | fused (default; one pass per parameter, Burn's bits), burn |
//! | `RESNET_CUDA_DGRAD=spread` | experimental strided input gradient with `gemm` | spread |
//! | `RESNET_CUDA_WGRAD=taps` | experimental weight gradient with `gemm` | taps |
//! | `--cuda-optim` / `RESNET_CUDA_OPTIM` | CUDA optimizer update | burn (default), fused (one kernel per parameter) |
//! | `--cuda-layout` / `RESNET_CUDA_LAYOUT` | cuDNN's layout for bf16 convolutions | nchw (default), nhwc (channels-last; cuDNN convolutions only) |
//! | `--cuda-math` / `RESNET_CUDA_MATH` | cuDNN's f32 arithmetic | tf32 (default), strict |
//! | `--deterministic` / `RESNET_DETERMINISTIC` | cuDNN: deterministic algorithms only | flag |
//! | `--cudnn-workspace-mb` / `RESNET_CUDNN_WORKSPACE_MB` | cuDNN workspace cap | MiB (default 1024) |
//!
//! The convolution precision is not here: it belongs to the run's configuration
//! (`--conv-precision`), and the trainer applies it.

use anyhow::{bail, Result};
use resnet_kernels::{
    CpuBn, CpuConv, CpuOptim, CudaBn, CudaConv, CudaLayout, CudaMath, CudaOptim, KernelChoice,
};

use crate::args::{CudaBnArg, CudaConvArg, CudaLayoutArg, CudaMathArg, CudaOptimArg, DeviceArgs};

/// `--cuda-conv` when not given. cuDNN: on an H200 it matched Burn's f32 convolution on every
/// ResNet-18/50 shape and trained 3x faster than gemm (benchmarks/RESULTS.md, 2026-12-04);
/// where cuDNN is missing each call falls back to gemm (one warning, a metric).
pub const DEFAULT_CUDA_CONV: CudaConvArg = CudaConvArg::Cudnn;

/// The kernels `args` and the process environment ask for.
pub fn choose(args: &DeviceArgs) -> Result<KernelChoice> {
    choose_with(args, |var| std::env::var(var).ok())
}

/// [`choose`] with the environment as a lookup function (testable without touching the
/// process environment).
pub fn choose_with(
    args: &DeviceArgs,
    env: impl Fn(&str) -> Option<String>,
) -> Result<KernelChoice> {
    // Whether fusion may go with these kernels is checked where a GPU is selected
    // (`crate::device::select`); a CPU run ignores the CUDA flags.
    let conv = args.cuda_conv.unwrap_or(DEFAULT_CUDA_CONV);
    let parse = |var: &str| -> Result<Option<String>> { Ok(env(var).filter(|v| !v.is_empty())) };
    if args.cudnn_workspace_mb == Some(0) {
        bail!("--cudnn-workspace-mb must be at least 1");
    }
    let mut k = KernelChoice {
        cuda_conv: cuda_conv(conv),
        // BatchNorm follows the convolutions unless asked: cuDNN's with cuDNN's, and the
        // other kernel sets keep the Burn ops they were measured with.
        cuda_bn: match (args.cuda_bn, conv) {
            (Some(CudaBnArg::Cudnn), _) | (None, CudaConvArg::Cudnn) => CudaBn::Cudnn,
            (Some(CudaBnArg::CudnnFused), _) => CudaBn::CudnnFused,
            (Some(CudaBnArg::Burn), _) | (None, _) => CudaBn::Burn,
        },
        cuda_optim: match args.cuda_optim {
            Some(CudaOptimArg::Fused) => CudaOptim::Fused,
            Some(CudaOptimArg::Burn) | None => CudaOptim::Burn,
        },
        cuda_math: match args.cuda_math {
            Some(CudaMathArg::Strict) => CudaMath::Strict,
            Some(CudaMathArg::Tf32) | None => CudaMath::Tf32,
        },
        cuda_layout: match args.cuda_layout {
            Some(CudaLayoutArg::Nhwc) => CudaLayout::Nhwc,
            Some(CudaLayoutArg::Nchw) | None => CudaLayout::Nchw,
        },
        deterministic: args.deterministic,
        ..KernelChoice::default()
    };

    if let Some(mb) = args.cudnn_workspace_mb {
        k.cudnn_workspace_mb = mb;
    }
    if let Some(v) = parse("RESNET_CONV")? {
        k.cpu_conv = v
            .parse::<CpuConv>()
            .map_err(|e| anyhow::anyhow!("RESNET_CONV: {e}"))?;
    }
    if let Some(v) = parse("RESNET_BN")? {
        k.cpu_bn = v
            .parse::<CpuBn>()
            .map_err(|e| anyhow::anyhow!("RESNET_BN: {e}"))?;
    }
    if let Some(v) = parse("RESNET_OPTIM")? {
        k.cpu_optim = v
            .parse::<CpuOptim>()
            .map_err(|e| anyhow::anyhow!("RESNET_OPTIM: {e}"))?;
    }
    k.cuda_spread_dgrad = switch(&env, "RESNET_CUDA_DGRAD", "spread")?;
    k.cuda_taps_wgrad = switch(&env, "RESNET_CUDA_WGRAD", "taps")?;
    Ok(k)
}

/// The kernels a `--cuda-conv` value names.
pub fn cuda_conv(arg: CudaConvArg) -> CudaConv {
    match arg {
        CudaConvArg::Autotune => CudaConv::Autotune,
        CudaConvArg::Gemm => CudaConv::Gemm,
        CudaConvArg::Direct => CudaConv::Direct,
        CudaConvArg::Tuned => CudaConv::Tuned,
        CudaConvArg::Cudnn => CudaConv::Cudnn,
    }
}

/// Whether `var` is set to `on` (unset or empty: off; anything else is an error that names
/// the variable and the one accepted value).
fn switch(env: &impl Fn(&str) -> Option<String>, var: &str, on: &str) -> Result<bool> {
    match env(var).as_deref() {
        None | Some("") => Ok(false),
        Some(v) if v == on => Ok(true),
        Some(v) => bail!("{var}: unknown value '{v}': expected {on} (or unset)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_env::env;

    #[test]
    fn defaults_flags_and_overrides_end_up_in_one_value() {
        let args = DeviceArgs::default();
        let k = choose_with(&args, env(&[])).expect("defaults");
        assert_eq!(k.cpu_conv, CpuConv::Winograd);
        assert_eq!(k.cpu_bn, CpuBn::Fused);
        assert_eq!(k.cpu_optim, CpuOptim::Fused);
        assert_eq!(
            (k.cuda_conv, k.cuda_bn),
            (CudaConv::Cudnn, CudaBn::Cudnn),
            "the binaries' CUDA default is cuDNN for both"
        );
        let gemm = DeviceArgs {
            cuda_conv: Some(CudaConvArg::Gemm),
            ..DeviceArgs::default()
        };
        assert_eq!(
            choose_with(&gemm, env(&[])).expect("gemm").cuda_bn,
            CudaBn::Burn,
            "other kernel sets keep Burn's BatchNorm unless asked"
        );
        assert!(!k.cuda_spread_dgrad && !k.cuda_taps_wgrad);

        let k = choose_with(
            &args,
            env(&[
                ("RESNET_CONV", "burn"),
                ("RESNET_BN", "burn"),
                ("RESNET_OPTIM", "burn"),
                ("RESNET_CUDA_DGRAD", "spread"),
                ("RESNET_CUDA_WGRAD", "taps"),
            ]),
        )
        .expect("overrides");
        assert_eq!((k.cpu_conv, k.cpu_bn), (CpuConv::Burn, CpuBn::Burn));
        assert_eq!(k.cpu_optim, CpuOptim::Burn);
        assert!(k.cuda_spread_dgrad && k.cuda_taps_wgrad);

        let tuned = DeviceArgs {
            cuda_conv: Some(CudaConvArg::Tuned),
            ..DeviceArgs::default()
        };
        assert_eq!(
            choose_with(&tuned, env(&[])).expect("tuned").cuda_conv,
            CudaConv::Tuned
        );

        let cudnn = DeviceArgs {
            cuda_conv: Some(CudaConvArg::Cudnn),
            cuda_math: Some(CudaMathArg::Strict),
            deterministic: true,
            cudnn_workspace_mb: Some(64),
            cuda_bn: Some(CudaBnArg::Cudnn),
            cuda_optim: Some(CudaOptimArg::Fused),
            ..DeviceArgs::default()
        };
        let k = choose_with(&cudnn, env(&[])).expect("cudnn");
        assert_eq!(k.cuda_optim, CudaOptim::Fused);
        assert_eq!(k.cuda_layout, CudaLayout::Nchw, "the default");
        let nhwc = DeviceArgs {
            cuda_layout: Some(CudaLayoutArg::Nhwc),
            ..DeviceArgs::default()
        };
        assert_eq!(
            choose_with(&nhwc, env(&[])).expect("nhwc").cuda_layout,
            CudaLayout::Nhwc
        );
        let fused_bn = DeviceArgs {
            cuda_bn: Some(CudaBnArg::CudnnFused),
            ..DeviceArgs::default()
        };
        assert_eq!(
            choose_with(&fused_bn, env(&[])).expect("fused").cuda_bn,
            CudaBn::CudnnFused
        );
        assert_eq!(k.cuda_conv, CudaConv::Cudnn);
        assert_eq!(k.cuda_bn, CudaBn::Cudnn);
        assert_eq!(k.cuda_math, CudaMath::Strict);
        assert!(k.deterministic);
        assert_eq!(k.cudnn_workspace_mb, 64);
        let k = choose_with(&args, env(&[])).expect("defaults");
        assert_eq!(k.cuda_math, CudaMath::Tf32);
        // Not measured on a GPU yet: Burn's optimizer stays the default.
        assert_eq!(k.cuda_optim, CudaOptim::Burn);
        assert_eq!(k.cuda_bn, CudaBn::Cudnn);
        assert_eq!(
            k.cudnn_workspace_mb,
            resnet_kernels::DEFAULT_CUDNN_WORKSPACE_MB
        );
    }

    #[test]
    fn bad_values_are_errors_that_name_the_variable() {
        let args = DeviceArgs::default();
        for (pairs, want) in [
            (
                &[("RESNET_CONV", "fast")][..],
                "RESNET_CONV: unknown CPU convolution 'fast': expected gemm, gemm-all-taps, burn, winograd",
            ),
            (
                &[("RESNET_BN", "off")][..],
                "RESNET_BN: unknown CPU BatchNorm 'off': expected fused, unfolded, burn",
            ),
            (
                &[("RESNET_OPTIM", "sgd")][..],
                "RESNET_OPTIM: unknown CPU optimizer 'sgd': expected fused, burn",
            ),
            (
                &[("RESNET_CUDA_WGRAD", "tap")][..],
                "RESNET_CUDA_WGRAD: unknown value 'tap': expected taps (or unset)",
            ),
        ] {
            let pairs: &'static [(&str, &str)] = Box::leak(pairs.to_vec().into_boxed_slice());
            let e = choose_with(&args, env(pairs)).expect_err("bad value");
            assert_eq!(e.to_string(), want);
        }
        let zero = DeviceArgs {
            cudnn_workspace_mb: Some(0),
            ..DeviceArgs::default()
        };
        let e = choose_with(&zero, env(&[])).expect_err("zero workspace");
        assert_eq!(e.to_string(), "--cudnn-workspace-mb must be at least 1");
    }
}
