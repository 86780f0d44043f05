//! The convolution on CUDA without kernel fusion (`CubeBackend<CudaRuntime>`), with the kernel
//! strategy chosen up front instead of autotuned.
//!
//! Why: Burn's default CUDA path autotunes every convolution pass (forward, input gradient,
//! weight gradient) for every new shape. Each candidate is compiled with NVRTC and timed, and
//! the weight-gradient fallback candidate is itself a convolution that autotunes again. On a
//! ResNet the first training step therefore compiles and times a few hundred kernels. A fixed
//! strategy compiles one kernel per pass and shape. `--cuda-conv gemm` (implicit GEMM on the
//! tensor cores) or `direct` select it; `tuned` times a few fixed candidates per shape, `gemm`
//! among them ([`super::tuned`]); `autotune` leaves Burn's behaviour unchanged.

use std::sync::atomic::{AtomicU8, Ordering};

use burn::tensor::ops::{ConvOptions, FloatTensorOps};
use burn::tensor::{DType, FloatDType, Shape};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::kernel::conv::{
    conv_data_backward, conv_forward, conv_weight_backward, ConvStrategy,
};
use burn_cubecl::kernel::matmul::{matmul, MatmulStrategy};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;

use super::autodiff::ConvKernels;
use super::ConvGeom;

/// Burn's CUDA backend without the fusion layer: its tensors are cubecl tensors, so the
/// convolution kernels can be called with an explicit strategy.
pub type CudaPlain = CubeBackend<CudaRuntime, f32, i32, u8>;

type Tensor = CubeTensor<CudaRuntime>;

/// How convolutions run on the plain (unfused) CUDA backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CudaConv {
    /// Burn's autotuned convolution (Burn's default).
    Autotune,
    /// Implicit GEMM on the tensor cores (cmma); falls back to `Direct` for a shape it rejects.
    Gemm,
    /// Burn's direct convolution kernels: one simple kernel per pass, slowest at run time.
    Direct,
    /// Per shape and pass, the fastest of a few fixed candidates, `gemm` among them, timed
    /// once on the device and cached ([`super::tuned`]).
    Tuned,
}

impl CudaConv {
    /// The name `--cuda-conv` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Autotune => "autotune",
            Self::Gemm => "gemm",
            Self::Direct => "direct",
            Self::Tuned => "tuned",
        }
    }
}

static CHOICE: AtomicU8 = AtomicU8::new(0);

/// Whether environment variable `var` is `value`, read once into `cell`. The experimental
/// switches, both with `gemm` and not yet measured on a GPU: `RESNET_CUDA_DGRAD=spread`
/// (strided input gradients as stride-1 implicit GEMM on the spread output gradient,
/// [`super::dilate`], instead of Burn's autotuned transposed convolution) and
/// `RESNET_CUDA_WGRAD=taps` (weight gradients as batched matmuls per kernel tap,
/// [`super::wgrad`]).
fn env_is(cell: &'static std::sync::OnceLock<bool>, var: &str, value: &str) -> bool {
    *cell.get_or_init(|| std::env::var(var).as_deref() == Ok(value))
}

fn spread_dgrad() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    env_is(&V, "RESNET_CUDA_DGRAD", "spread")
}

fn taps_wgrad() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    env_is(&V, "RESNET_CUDA_WGRAD", "taps")
}

/// Sets the strategy for this process (the binaries do it once, from `--cuda-conv`).
pub fn set_cuda_conv(c: CudaConv) {
    CHOICE.store(c as u8, Ordering::Relaxed);
}

/// The strategy set by [`set_cuda_conv`] (default: autotune).
pub fn cuda_conv() -> CudaConv {
    match CHOICE.load(Ordering::Relaxed) {
        1 => CudaConv::Gemm,
        2 => CudaConv::Direct,
        3 => CudaConv::Tuned,
        _ => CudaConv::Autotune,
    }
}

fn options(g: &ConvGeom) -> ConvOptions<2> {
    ConvOptions {
        stride: g.stride,
        padding: g.pad,
        dilation: [1, 1],
        groups: 1,
    }
}

fn strategy(c: CudaConv) -> ConvStrategy {
    match c {
        CudaConv::Gemm | CudaConv::Tuned => ConvStrategy::ImplicitGemm,
        CudaConv::Direct | CudaConv::Autotune => ConvStrategy::Direct,
    }
}

/// Runs `f` with the chosen strategy; a shape the GEMM kernels reject (their setup error) runs
/// with the direct kernels instead. An error from those is a bug in Burn's kernels for a
/// shape this model uses: there is no way to report it from inside a backend op.
fn with_fallback<E: std::fmt::Debug>(
    what: &str,
    f: impl Fn(ConvStrategy) -> Result<Tensor, E>,
) -> Tensor {
    let c = cuda_conv();
    match f(strategy(c)) {
        Ok(t) => t,
        Err(_) if matches!(c, CudaConv::Gemm | CudaConv::Tuned) => f(ConvStrategy::Direct)
            .unwrap_or_else(|e| panic!("CUDA {what}: direct kernel failed too: {e:?}")),
        Err(e) => panic!("CUDA {what}: {e:?}"),
    }
}

/// `gemm`'s forward pass: implicit GEMM, direct kernels for a shape it rejects.
pub(crate) fn gemm_forward(x: Tensor, w: Tensor, g: &ConvGeom) -> Tensor {
    with_fallback("convolution", |s| {
        conv_forward::<CudaRuntime, 2>(x.clone(), w.clone(), None, options(g), s)
    })
}

/// `gemm`'s input gradient (a strided one is Burn's autotuned transposed convolution).
pub(crate) fn gemm_grad_input(dy: Tensor, w: Tensor, g: &ConvGeom) -> Tensor {
    let x_shape = Shape::new([g.batch, g.cin, g.in_hw[0], g.in_hw[1]]);
    with_fallback("input gradient", |s| {
        conv_data_backward(dy.clone(), w.clone(), x_shape.clone(), options(g), s)
    })
}

/// `gemm`'s weight gradient.
pub(crate) fn gemm_grad_weight(x: Tensor, dy: Tensor, g: &ConvGeom) -> Tensor {
    let w_shape = Shape::new([g.cout, g.cin, g.kernel[0], g.kernel[1]]);
    with_fallback("weight gradient", |s| {
        conv_weight_backward::<CudaRuntime, 2>(
            x.clone(),
            dy.clone(),
            w_shape.clone(),
            options(g),
            s,
        )
    })
}

fn tuned() -> bool {
    cuda_conv() == CudaConv::Tuned
}

// Each pass by the chosen strategy: `tuned`'s per-shape choice, else `gemm`'s kernels. The f32
// and the bf16 methods below both go through these.
fn forward_pass(x: Tensor, w: Tensor, g: &ConvGeom) -> Tensor {
    match tuned() {
        true => super::tuned::forward(x, w, g),
        false => gemm_forward(x, w, g),
    }
}

fn grad_input_pass(dy: Tensor, w: Tensor, g: &ConvGeom) -> Tensor {
    match tuned() {
        true => super::tuned::grad_input(dy, w, g),
        false => gemm_grad_input(dy, w, g),
    }
}

fn grad_weight_pass(x: Tensor, dy: Tensor, g: &ConvGeom) -> Tensor {
    match tuned() {
        true => super::tuned::grad_weight(x, dy, g),
        false => gemm_grad_weight(x, dy, g),
    }
}

/// Burn's cubecl convolution kernels with the strategy of [`cuda_conv`], for the autodiff op
/// of [`super::autodiff`].
#[derive(Debug)]
pub(crate) struct CudaKernels;

impl ConvKernels<CudaPlain> for CudaKernels {
    fn forward(x: &Tensor, w: &Tensor, g: &ConvGeom) -> Tensor {
        forward_pass(x.clone(), w.clone(), g)
    }

    fn grad_input(dy: &Tensor, w: &Tensor, g: &ConvGeom) -> Tensor {
        if g.stride != [1, 1] && cuda_conv() == CudaConv::Gemm && spread_dgrad() {
            // Stride 1 on the spread gradient: implicit GEMM instead of Burn's autotuned
            // transposed convolution (see super::dilate).
            let x_shape = Shape::new([g.batch, g.cin, g.in_hw[0], g.in_hw[1]]);
            let dy = super::dilate::spread_for::<CudaPlain>(dy.clone(), g);
            let unit = ConvOptions {
                stride: [1, 1],
                ..options(g)
            };
            return with_fallback("input gradient", |s| {
                conv_data_backward(dy.clone(), w.clone(), x_shape.clone(), unit.clone(), s)
            });
        }
        grad_input_pass(dy.clone(), w.clone(), g)
    }

    fn grad_weight(x: &Tensor, dy: &Tensor, g: &ConvGeom) -> Tensor {
        if cuda_conv() == CudaConv::Gemm && taps_wgrad() {
            // One batched matmul per kernel tap (see super::wgrad).
            return super::wgrad::grad_weight_by_taps::<CudaPlain, FixedMatmul>(
                x.clone(),
                dy.clone(),
                g,
            );
        }
        grad_weight_pass(x.clone(), dy.clone(), g)
    }

    // bf16: the kernels run on bf16 tensors (tensor-core inputs at half the bytes; cubecl
    // accumulates in f32) and the result is cast back, so everything around the convolution
    // stays f32. `tuned` tunes the bf16 shapes separately (the dtype is part of the key); the
    // experimental `RESNET_CUDA_*` gradient paths are f32-only and not used here.
    fn forward_bf16(x: &Tensor, w: &Tensor, g: &ConvGeom) -> Tensor {
        to_f32(forward_pass(to_bf16(x), to_bf16(w), g))
    }

    fn grad_input_bf16(dy: &Tensor, w: &Tensor, g: &ConvGeom) -> Tensor {
        to_f32(grad_input_pass(to_bf16(dy), to_bf16(w), g))
    }

    fn grad_weight_bf16(x: &Tensor, dy: &Tensor, g: &ConvGeom) -> Tensor {
        to_f32(grad_weight_pass(to_bf16(x), to_bf16(dy), g))
    }
}

fn to_bf16(t: &Tensor) -> Tensor {
    CudaPlain::float_cast(t.clone(), FloatDType::BF16)
}

fn to_f32(t: Tensor) -> Tensor {
    CudaPlain::float_cast(t, FloatDType::F32)
}

/// cubek's default matmul kernel, without autotuning (the classifier layer, see
/// [`crate::linear`]); a problem it rejects runs through the backend's autotuned matmul.
#[derive(Debug)]
pub struct FixedMatmul;

impl crate::linear::MatmulKernel<CudaPlain> for FixedMatmul {
    fn matmul(a: Tensor, b: Tensor) -> Tensor {
        matmul(a.clone(), b.clone(), None, MatmulStrategy::Cube, DType::F32)
            .unwrap_or_else(|_| CudaPlain::float_matmul(a, b))
    }
}
