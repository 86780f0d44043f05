//! `resnet conv-check`: every convolution shape of a model, all three passes (forward, input
//! gradient, weight gradient), run with the chosen kernels on the chosen device and compared
//! with Burn's own f32 convolution on the CPU; then every BatchNorm shape, a training step and
//! evaluation, against the model's generic BatchNorm on the CPU ([`crate::bn_check`]); then the
//! optimizer's fused update against Burn's optimizer on the same device
//! ([`crate::optim_check`]). The GPU check runs it first, so a wrong descriptor, layout or
//! stream order shows up as a number before any benchmark.
//!
//! The error of a pass is `max |ours - reference| / max |reference|`, which is scale-free and
//! large (order 1) for any indexing or layout bug. The tolerance depends on what the kernels may
//! legitimately round ([`tolerance`]).
//!
//! (Over 400 lines: one command whose three checks share the inputs, the tolerance rules and
//! the report; tests are the last 50.)

use anyhow::{bail, Result};
use burn::backend::{Autodiff, Flex};
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use clap::Args;
use resnet_kernels::conv::{conv2d, record_geometries};
use resnet_kernels::{ConvGeom, ConvPrecision, CpuConv, CudaConv, CudaMath, KernelChoice};
use resnet_model::BuildResNet;
use serde::Serialize;

use crate::args::{DeviceArgs, ModelShapeArgs};
use crate::bn_check::{bn_tolerance, BnErrors};
use crate::device::{select, Selected};
use crate::optim_check::{optim_tolerance, OptimErrors};

/// `resnet conv-check`.
#[derive(Args, Debug)]
pub struct ConvCheckArgs {
    /// Model and input shape (the batch is small: the reference runs on the CPU).
    #[command(flatten)]
    pub shape: ModelShapeArgs,
    /// Convolution arithmetic: f32 or bf16.
    #[arg(long, value_name = "f32|bf16", default_value = "f32")]
    pub conv_precision: String,
    /// Largest accepted error per pass (max |ours - reference| / max |reference|) [default:
    /// from the device, the kernels and the precision: 1e-4 for the CPU's f32, 1e-3 for
    /// cuDNN's strict f32, 1e-2 for TF32, 3e-2 for bf16].
    #[arg(long)]
    pub tolerance: Option<f64>,
    /// Which checks run, comma-separated [default: conv,bn,optim].
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "LIST",
        default_value = "conv,bn,optim"
    )]
    pub checks: Vec<Check>,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    /// Where to run the kernels under test.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// One part of `resnet conv-check`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Every convolution shape, all three passes, against Burn's f32 convolution on the CPU.
    Conv,
    /// Every BatchNorm shape, a training step then evaluation, against the generic code on the
    /// CPU.
    Bn,
    /// The optimizer's fused update against Burn's optimizer on the same device.
    Optim,
}

/// The errors of one convolution shape's three passes.
#[derive(Debug, Serialize)]
pub struct ShapeErrors {
    /// e.g. `n8 c64 32x32 -> c64 32x32 k3x3 s1x1 p1x1`.
    pub shape: String,
    /// Forward, input gradient, weight gradient.
    pub forward: f64,
    /// See `forward`.
    pub input_grad: f64,
    /// See `forward`.
    pub weight_grad: f64,
}

/// The whole check.
#[derive(Debug, Serialize)]
pub struct ConvCheck {
    /// Where the kernels ran.
    pub device: String,
    /// `--cuda-conv` on a GPU, the CPU convolution otherwise.
    pub kernels: String,
    /// f32 or bf16.
    pub conv_precision: String,
    /// The accepted error.
    pub tolerance: f64,
    /// Per distinct shape.
    pub shapes: Vec<ShapeErrors>,
    /// `--cuda-bn` on a GPU, the CPU BatchNorm otherwise.
    pub bn_kernels: String,
    /// The accepted BatchNorm error.
    pub bn_tolerance: f64,
    /// Per distinct BatchNorm shape.
    pub bn: Vec<BnErrors>,
    /// The optimizer update under test (`fused` or `burn`), checked against Burn's.
    pub optim_kernels: String,
    /// Largest accepted optimizer error.
    pub optim_tolerance: f64,
    /// Per update rule.
    pub optim: Vec<OptimErrors>,
    /// The largest error of any pass, as a share of its tolerance (ok when at most 1).
    pub worst_share: f64,
    /// The largest convolution error.
    pub worst: f64,
    /// Whether every pass is within the tolerance.
    pub ok: bool,
}

/// The error a pass may show against an f32 reference: the CPU's f32 kernels only reorder
/// additions (1e-4); cuDNN's `strict` f32 may pick Winograd or FFT algorithms, exact in
/// exact arithmetic but with transform round-off of order 1e-4 (1e-3); TF32 rounds both
/// operands to 10 mantissa bits (~5e-4 each, over thousands of products: 1e-2); bf16 rounds
/// operands and result to 8 bits (3e-2). A wrong layout, descriptor or stream order gives
/// errors of order 1.
pub fn tolerance(gpu: bool, k: &KernelChoice) -> f64 {
    match (k.precision, gpu) {
        (ConvPrecision::Bf16, _) => 3e-2,
        (ConvPrecision::F32, false) => 1e-4,
        // Only cuDNN's `strict` promises f32 products on a GPU; cubecl's implicit GEMM runs f32
        // as TF32 on the tensor cores.
        (ConvPrecision::F32, true)
            if k.cuda_conv == CudaConv::Cudnn && k.cuda_math == CudaMath::Strict =>
        {
            1e-3
        }
        (ConvPrecision::F32, true) => 1e-2,
    }
}

/// `max |a - b| / max |b|` (0 for two all-zero tensors; infinite for a length mismatch, a
/// missing result (empty) or a non-finite value in `a`).
pub fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    if a.is_empty() || a.len() != b.len() || a.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| (*y as f64).abs()).fold(0.0, f64::max);
    if scale == 0.0 {
        if diff == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        diff / scale
    }
}

/// `t`'s values on the host as f32 (empty when they cannot be read, which the comparison
/// reports as an infinite error).
pub(crate) fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default()
}

/// Deterministic values in [-1, 1).
pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The three passes of `g` on backend `B` with kernels `k`: (y, dx, dw) on the host.
fn passes<B: AutodiffBackend>(
    k: &KernelChoice,
    g: &ConvGeom,
    device: &B::Device,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let x_shape = [g.batch, g.cin, g.in_hw[0], g.in_hw[1]];
    let w_shape = [g.cout, g.cin, g.kernel[0], g.kernel[1]];
    let y_shape = [g.batch, g.cout, g.out_hw[0], g.out_hw[1]];
    let n = |s: [usize; 4]| s.iter().product::<usize>();
    let mut conv: Conv2d<B> = Conv2dConfig::new([g.cin, g.cout], g.kernel)
        .with_stride(g.stride)
        .with_padding(PaddingConfig2d::Explicit(
            g.pad[0], g.pad[1], g.pad[0], g.pad[1],
        ))
        .with_bias(false)
        .init(device);
    conv.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(values(n(w_shape), 2), w_shape),
        device,
    ));
    let x = Tensor::<B, 4>::from_data(TensorData::new(values(n(x_shape), 1), x_shape), device)
        .require_grad();
    let r = Tensor::<B, 4>::from_data(TensorData::new(values(n(y_shape), 3), y_shape), device);
    let y = conv2d(k, &conv, x.clone());
    let grads = (y.clone() * r).sum().backward();
    let dx = x.grad(&grads).map(host).unwrap_or_default();
    let dw = conv.weight.grad(&grads).map(host).unwrap_or_default();
    (host(y.inner()), dx, dw)
}

/// Runs `resnet conv-check`.
pub fn run(a: ConvCheckArgs) -> Result<()> {
    let cfg = a.shape.config(10)?;
    let precision: ConvPrecision = a.conv_precision.parse().map_err(anyhow::Error::msg)?;
    let sel = select(&a.device)?;
    let k = crate::kernels::choose(&a.device)?.with_precision(precision);
    let gpu = !matches!(sel, Selected::Cpu);
    let tol = a.tolerance.unwrap_or_else(|| tolerance(gpu, &k));
    if !(tol >= 0.0) || !tol.is_finite() {
        bail!("--tolerance must be a finite number >= 0, got {tol}");
    }
    // The model's distinct convolution shapes, in order of first use.
    let model = cfg.init::<Flex>(&Default::default())?;
    let s = a.shape.image_size;
    let x = Tensor::<Flex, 4>::zeros([a.shape.batch_size, 3, s, s], &Default::default());
    let (_, geoms) = record_geometries(|| model.forward(x));
    let mut distinct: Vec<ConvGeom> = Vec::new();
    for g in geoms {
        if !distinct.contains(&g) {
            distinct.push(g);
        }
    }
    // The reference: Burn's own f32 convolution on the CPU, whatever is under test.
    let reference = KernelChoice {
        cpu_conv: CpuConv::Burn,
        ..KernelChoice::default()
    };
    let mut shapes = Vec::new();
    let run_conv = a.checks.contains(&Check::Conv);
    for (i, g) in distinct.iter().enumerate().filter(|_| run_conv) {
        let name = g.key(g.batch);
        if !a.json {
            crate::say!("conv {}/{}: {name}", i + 1, distinct.len());
        }
        let (y, dx, dw) = crate::with_train_backend!(sel, |B, device| passes::<B>(&k, g, &device));
        let (ry, rdx, rdw) = passes::<Autodiff<Flex>>(&reference, g, &Default::default());
        shapes.push(ShapeErrors {
            shape: name,
            forward: relative_error(&y, &ry),
            input_grad: relative_error(&dx, &rdx),
            weight_grad: relative_error(&dw, &rdw),
        });
    }
    // BatchNorm: its input shapes are the convolutions' outputs.
    let mut bn_shapes: Vec<[usize; 4]> = Vec::new();
    for g in &distinct {
        let s = [g.batch, g.cout, g.out_hw[0], g.out_hw[1]];
        if !bn_shapes.contains(&s) {
            bn_shapes.push(s);
        }
    }
    let bn = if a.checks.contains(&Check::Bn) {
        crate::bn_check::check(sel, &k, &bn_shapes, a.json)
    } else {
        Vec::new()
    };
    let optim = if a.checks.contains(&Check::Optim) {
        if !a.json {
            let n = crate::optim_check::rules().len();
            crate::say!("optimizer: the fused update against Burn's, {n} rules");
        }
        crate::with_train_backend!(sel, |B, device| {
            let m = cfg.init::<B>(&device)?;
            // Materialise the lazily initialised parameters, so both runs start from them.
            let _ = resnet_train::param_hash(&m);
            anyhow::Ok(crate::optim_check::check::<B>(&k, &m, &device))
        })?
    } else {
        Vec::new()
    };
    let optim_tol = a.tolerance.unwrap_or_else(|| optim_tolerance(gpu));
    let worst_optim = optim.iter().map(|o| o.error).fold(0.0, f64::max);
    let bn_tol = a.tolerance.unwrap_or_else(|| bn_tolerance(gpu));
    let worst = shapes
        .iter()
        .flat_map(|s| [s.forward, s.input_grad, s.weight_grad])
        .fold(0.0, f64::max);
    let worst_bn = bn
        .iter()
        .flat_map(|s| {
            [
                s.forward,
                s.input_grad,
                s.gamma_grad,
                s.beta_grad,
                s.running_stats,
                s.residual_grad,
                s.eval,
            ]
        })
        .fold(0.0, f64::max);
    let share = |e: f64, t: f64| {
        if t > 0.0 {
            e / t
        } else if e == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    };
    let worst_share = share(worst, tol)
        .max(share(worst_bn, bn_tol))
        .max(share(worst_optim, optim_tol));
    let report = ConvCheck {
        device: format!("{sel:?}"),
        kernels: if gpu {
            k.cuda_conv.name().to_string()
        } else {
            k.cpu_conv.name().to_string()
        },
        conv_precision: precision.name().to_string(),
        tolerance: tol,
        shapes,
        bn_kernels: if gpu {
            k.cuda_bn.name().to_string()
        } else {
            k.cpu_bn.name().to_string()
        },
        bn_tolerance: bn_tol,
        bn,
        optim_kernels: if gpu {
            k.cuda_optim.name().to_string()
        } else {
            k.cpu_optim.name().to_string()
        },
        optim_tolerance: optim_tol,
        optim,
        worst_share,
        worst,
        ok: worst <= tol && worst_bn <= bn_tol && worst_optim <= optim_tol,
    };
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    if report.worst > report.tolerance {
        bail!(
            "a convolution pass differs from the reference by {:.3e} (tolerance {:.1e})",
            report.worst,
            report.tolerance
        );
    }
    if worst_bn > report.bn_tolerance {
        bail!(
            "a BatchNorm result differs from the reference by {:.3e} (tolerance {:.1e})",
            worst_bn,
            report.bn_tolerance
        );
    }
    if !report.ok {
        bail!(
            "the {} optimizer update differs from Burn's by {:.3e} (tolerance {:.1e})",
            report.optim_kernels,
            worst_optim,
            report.optim_tolerance
        );
    }
    Ok(())
}

fn print_table(r: &ConvCheck) {
    println!(
        "{} kernels on {}, {}: error = max|ours - reference| / max|reference| (tolerance {:.1e})",
        r.kernels, r.device, r.conv_precision, r.tolerance
    );
    if !r.shapes.is_empty() {
        println!(
            "{:<52} {:>10} {:>10} {:>10}",
            "shape", "forward", "input grad", "weight grad"
        );
    }
    for s in &r.shapes {
        println!(
            "{:<52} {:>10.2e} {:>10.2e} {:>10.2e}",
            s.shape, s.forward, s.input_grad, s.weight_grad
        );
    }
    if !r.bn.is_empty() {
        println!(
            "{} BatchNorm (+ReLU), a training step then evaluation, against the generic f32 code (tolerance {:.1e})",
            r.bn_kernels, r.bn_tolerance
        );
        println!(
            "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "shape",
            "forward",
            "input grad",
            "gamma grad",
            "beta grad",
            "running",
            "residual",
            "eval"
        );
    }
    for s in &r.bn {
        println!(
            "{:<24} {:>10.2e} {:>10.2e} {:>10.2e} {:>10.2e} {:>10.2e} {:>10.2e} {:>10.2e}",
            format!("{:?}", s.shape),
            s.forward,
            s.input_grad,
            s.gamma_grad,
            s.beta_grad,
            s.running_stats,
            s.residual_grad,
            s.eval
        );
    }
    if !r.optim.is_empty() {
        println!(
            "{} optimizer update against Burn's, {} steps (tolerance {:.1e})",
            r.optim_kernels,
            crate::optim_check::STEPS,
            r.optim_tolerance
        );
    }
    for o in &r.optim {
        println!("{:<30} {:>10.2e}", o.optimizer, o.error);
    }
    println!(
        "worst {:.2e} of the tolerance: {}",
        r.worst_share,
        if r.ok { "ok" } else { "FAILED" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_is_scale_free_and_catches_garbage() {
        assert_eq!(relative_error(&[1.0, -2.0], &[1.0, -2.0]), 0.0);
        assert!((relative_error(&[1.0, -2.1], &[1.0, -2.0]) - 0.05).abs() < 1e-6);
        assert!((relative_error(&[100.0, -210.0], &[100.0, -200.0]) - 0.05).abs() < 1e-6);
        assert_eq!(relative_error(&[0.0], &[0.0]), 0.0);
        assert_eq!(relative_error(&[1e-9], &[0.0]), f64::INFINITY);
        assert_eq!(relative_error(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        assert_eq!(
            relative_error(&[], &[]),
            f64::INFINITY,
            "a missing gradient"
        );
        assert_eq!(relative_error(&[f32::NAN], &[1.0]), f64::INFINITY);
    }

    #[test]
    fn tolerances_follow_what_the_arithmetic_may_round() {
        let k = KernelChoice::default();
        assert_eq!(tolerance(false, &k), 1e-4);
        assert_eq!(
            tolerance(true, &k),
            1e-2,
            "cubecl's f32 runs on TF32 tensor cores"
        );
        let cudnn = KernelChoice {
            cuda_conv: CudaConv::Cudnn,
            ..k
        };
        assert_eq!(tolerance(true, &cudnn), 1e-2);
        let strict = KernelChoice {
            cuda_math: CudaMath::Strict,
            ..cudnn
        };
        assert_eq!(tolerance(true, &strict), 1e-3);
        assert_eq!(
            tolerance(true, &strict.with_precision(ConvPrecision::Bf16)),
            3e-2
        );
        assert_eq!(
            tolerance(false, &k.with_precision(ConvPrecision::Bf16)),
            3e-2
        );
    }
}
