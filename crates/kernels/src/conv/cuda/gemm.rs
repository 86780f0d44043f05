//! The convolution passes with one fixed cubecl strategy: implicit GEMM on the tensor cores
//! (`--cuda-conv gemm`, and `tuned`'s `gemm` candidate) or Burn's direct kernels
//! (`--cuda-conv direct`).
//!
//! Why fixed: Burn's default CUDA path autotunes every convolution pass for every new shape.
//! Each candidate is compiled with NVRTC and timed, and the weight-gradient fallback candidate
//! is itself a convolution that autotunes again. On a ResNet the first training step therefore
//! compiles and times a few hundred kernels. A fixed strategy compiles one kernel per pass and
//! shape.

use burn::tensor::ops::ConvOptions;
use burn::tensor::Shape;
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::kernel::conv::{
    conv_data_backward, conv_forward, conv_weight_backward, ConvStrategy,
};
use burn_cubecl::tensor::CubeTensor;

use crate::conv::ConvGeom;

type Tensor = CubeTensor<CudaRuntime>;

/// A fixed cubecl convolution strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fixed {
    /// Implicit GEMM (cmma); the direct kernels for a shape it rejects.
    Gemm,
    /// The direct kernels only.
    Direct,
}

pub(crate) fn options(g: &ConvGeom) -> ConvOptions<2> {
    ConvOptions {
        stride: g.stride,
        padding: g.pad,
        dilation: [1, 1],
        groups: 1,
    }
}

/// Runs `f` with strategy `s`; with `Gemm`, a shape the GEMM kernels reject (their setup
/// error) runs with the direct kernels instead. An error from those is a bug in Burn's kernels
/// for a shape this model uses: there is no way to report it from inside a backend op.
pub(crate) fn with_fallback<E: std::fmt::Debug>(
    s: Fixed,
    what: &str,
    f: impl Fn(ConvStrategy) -> Result<Tensor, E>,
) -> Tensor {
    match s {
        Fixed::Gemm => f(ConvStrategy::ImplicitGemm).unwrap_or_else(|_| {
            f(ConvStrategy::Direct)
                .unwrap_or_else(|e| panic!("CUDA {what}: direct kernel failed too: {e:?}"))
        }),
        Fixed::Direct => f(ConvStrategy::Direct).unwrap_or_else(|e| panic!("CUDA {what}: {e:?}")),
    }
}

/// The forward pass.
pub(crate) fn forward(s: Fixed, x: Tensor, w: Tensor, g: &ConvGeom) -> Tensor {
    with_fallback(s, "convolution", |st| {
        conv_forward::<CudaRuntime, 2>(x.clone(), w.clone(), None, options(g), st)
    })
}

/// The input gradient (with `Gemm`, a strided one is Burn's autotuned transposed convolution).
pub(crate) fn grad_input(s: Fixed, dy: Tensor, w: Tensor, g: &ConvGeom) -> Tensor {
    let x_shape = Shape::new([g.batch, g.cin, g.in_hw[0], g.in_hw[1]]);
    with_fallback(s, "input gradient", |st| {
        conv_data_backward(dy.clone(), w.clone(), x_shape.clone(), options(g), st)
    })
}

/// The weight gradient.
pub(crate) fn grad_weight(s: Fixed, x: Tensor, dy: Tensor, g: &ConvGeom) -> Tensor {
    let w_shape = Shape::new([g.cout, g.cin, g.kernel[0], g.kernel[1]]);
    with_fallback(s, "weight gradient", |st| {
        conv_weight_backward::<CudaRuntime, 2>(
            x.clone(),
            dy.clone(),
            w_shape.clone(),
            options(g),
            st,
        )
    })
}
