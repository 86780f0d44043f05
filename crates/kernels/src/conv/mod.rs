//! The model's convolutions. On the CPU (Burn's flex backend, f32) they run through [`cpu`]:
//! im2col + GEMM for the forward pass and both gradients, about three times faster in training
//! than flex's own path (see benchmarks/RESULTS.md), with the 3x3 stride-1 layers' forward and
//! input gradient through [`winograd`] where it pays. On the plain CUDA backend with fixed kernels
//! chosen, `cuda` runs them with a fixed strategy instead of Burn's autotuning (`gemm`,
//! `direct`), with the fastest of a few fixed candidates per shape (`tuned`, [`tune_plan`]), or
//! through cuDNN (`cudnn`, [`crate::cudnn`]).
//! Every other backend, every convolution outside the fast path's shape (bias, groups,
//! dilation, `Same` padding, other dtypes), and `CpuConv::Burn` go through Burn unchanged.
//!
//! ```text
//! mod.rs       conv2d(): which implementation runs, from the KernelChoice and the backend type
//! autodiff.rs  the convolution as one autodiff node over a ConvKernels implementation
//! flex.rs      ConvKernels on the CPU, over cpu.rs (im2col + GEMM on slices)
//! folded.rs    evaluation on the CPU: the BatchNorm after a convolution folded into it
//! im2col.rs    the CPU column matrix and its adjoint, over the taps of taps.rs
//! im2col_register.rs  the same for planes of <= 16 floats as AVX-512 register permutes
//! winograd.rs  CPU Winograd F(2x2, 3x3) for 3x3 stride-1 layers (forward, input gradient;
//!              the weight gradient, its adjoint, in winograd_wgrad.rs; the transforms
//!              of maps up to 16x16, vectorised over all tiles, in winograd_small.rs)
//! taps.rs      which kernel taps read inside the image (the rest are skipped on the CPU)
//! cuda/        ConvKernels on CUDA: fixed strategies (gemm.rs), tuned.rs, implicit.rs
//! dilate.rs    strided input gradient as a stride-1 one (backend-generic, CPU-tested)
//! wgrad.rs     weight gradient as batched matmuls per kernel tap (backend-generic, CPU-tested)
//! layout.rs    NCHW <-> NHWC for channels-last bf16 on cuDNN (backend-generic, CPU-tested)
//! tune_plan.rs what `tuned` chooses between (plain data, CPU-tested)
//! ```

mod autodiff;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(any(test, feature = "cuda"))]
pub mod dilate;
mod flex;
mod folded;
mod im2col;
#[cfg(target_arch = "x86_64")]
mod im2col_register;
#[cfg(any(test, feature = "cuda"))]
mod layout;
mod record;
mod taps;
pub mod tune_plan;
#[cfg(any(test, feature = "cuda"))]
pub mod wgrad;
pub mod winograd;
mod winograd_small;
mod winograd_wgrad;

use std::any::TypeId;

use burn::backend::Flex;
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};

use crate::backends::FlexTrain;
use crate::cast::{cast, float_primitive};
use crate::choice::{CpuConv, KernelChoice};

pub use crate::geom::ConvGeom;
pub use folded::{conv2d_bn_eval, folds, BnEval};
pub use record::record_geometries;

/// `conv.forward(x)` by the implementation `k` chooses for backend `B`.
///
/// # Shapes
/// `x: [N, C_in, H, W]` -> `[N, C_out, H_out, W_out]`.
pub fn conv2d<B: Backend>(k: &KernelChoice, conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let geom = geometry(conv, x.dims());
    if let Some(g) = geom {
        record::seen(g);
    }
    let Some(geom) = geom else {
        return conv.forward(x);
    };
    if x.dtype() != DType::F32 {
        return conv.forward(x);
    }
    let is = |t: TypeId| TypeId::of::<B>() == t;
    if is(TypeId::of::<FlexTrain>()) || is(TypeId::of::<Flex>()) {
        if k.cpu_conv == CpuConv::Burn {
            return conv.forward(x);
        }
        let kernels = flex::FlexKernels {
            skip_taps: k.cpu_conv != CpuConv::GemmAllTaps,
            winograd: k.cpu_conv == CpuConv::Winograd,
        };
        return run::<B, Flex, _>(kernels, k, conv, x, geom);
    }
    #[cfg(feature = "cuda")]
    if k.cuda_fixed() {
        use crate::backends::CudaPlain;
        if is(TypeId::of::<burn::backend::Autodiff<CudaPlain>>()) || is(TypeId::of::<CudaPlain>()) {
            let kernels = cuda::CudaKernels::new(k);
            return run::<B, CudaPlain, _>(kernels, k, conv, x, geom);
        }
    }
    conv.forward(x)
}

/// Runs the convolution with `kernels` on inner backend `I`, where `B` is `I` itself (inference)
/// or `Autodiff<I>` (training).
fn run<B: Backend, I: Backend, K: autodiff::ConvKernels<I>>(
    kernels: K,
    k: &KernelChoice,
    conv: &Conv2d<B>,
    x: Tensor<B, 4>,
    geom: ConvGeom,
) -> Tensor<B, 4> {
    let (x, w) = (float_primitive(x), float_primitive(conv.weight.val()));
    let y: B::FloatTensorPrimitive =
        if TypeId::of::<B>() == TypeId::of::<burn::backend::Autodiff<I>>() {
            let (Some(x), Some(w)) = (cast(x), cast(w)) else {
                unreachable!("B is Autodiff<I>, checked by the caller")
            };
            let y = autodiff::conv2d::<I, K>(kernels, k.precision, x, w, geom);
            cast(y).expect("same type")
        } else {
            let (Some(x), Some(w)) = (cast::<_, I::FloatTensorPrimitive>(x), cast(w)) else {
                unreachable!("B is I, checked by the caller")
            };
            cast(autodiff::forward(&kernels, k.precision, &x, &w, &geom)).expect("same type")
        };
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// The geometry of `conv` applied to an input of shape `input`, when the kernels handle it.
fn geometry<B: Backend>(conv: &Conv2d<B>, input: [usize; 4]) -> Option<ConvGeom> {
    if conv.bias.is_some() || conv.groups != 1 || conv.dilation != [1, 1] {
        return None;
    }
    let pad = match conv.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        _ => return None,
    };
    ConvGeom::new(input, conv.weight.dims(), conv.stride, pad)
}
