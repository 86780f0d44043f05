//! cubek's implicit-GEMM convolution passes with an explicit algorithm ([`Algo`]).
//!
//! Burn 0.21 exposes these kernels only through `ConvStrategy::ImplicitGemm`, which always
//! picks "simple sync" on WMMA tiles; the other algorithms sit in private modules. These are
//! the same launches as Burn's (burn-cubecl's `kernel/conv/*/implicit_gemm/launch.rs`): NCHW
//! tensors are viewed as NHWC, cubek computes into a new NHWC tensor, which is viewed back.
//! A shape or device an algorithm cannot handle is a setup error, never a launch.

use burn::tensor::Shape;
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::ops::{permute_nchw_to_nhwc, permute_nhwc_to_nchw};
use burn_cubecl::tensor::CubeTensor;
use cubek::convolution::components::ConvSetupError;
use cubek::convolution::{
    launch_ref, AcceleratedTileKind, ConvAlgorithm, ConvolutionArgs, ConvolutionInputs, Strategy,
};
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
use cubek::std::InputBinding;

use crate::conv::tune_plan::Algo;
use crate::conv::ConvGeom;

type Tensor = CubeTensor<CudaRuntime>;

fn strategy(a: Algo) -> Strategy {
    let (algorithm, tile_kind) = match a {
        Algo::SyncCmma => (ConvAlgorithm::SimpleSyncCyclic, AcceleratedTileKind::Cmma),
        Algo::SyncMma => (ConvAlgorithm::SimpleSyncStrided, AcceleratedTileKind::Mma),
        Algo::AsyncMma => (ConvAlgorithm::SimpleAsyncStrided, AcceleratedTileKind::Mma),
        Algo::TmaMma => (ConvAlgorithm::SimpleAsyncTma, AcceleratedTileKind::Mma),
    };
    Strategy::Inferred {
        algorithm,
        tile_kind,
    }
}

type Binding = InputBinding<CudaRuntime>;
type OutBinding = burn_cubecl::cubecl::prelude::TensorBinding<CudaRuntime>;

/// Views `lhs` and `rhs` (NCHW) as NHWC, makes an NHWC result of `out` (its shape) with the
/// dtype of `out_like`, launches the pass `inputs` builds from the three, and returns the result
/// viewed as NCHW.
fn launch(
    a: Algo,
    g: &ConvGeom,
    stride: [usize; 2],
    (lhs, rhs): (Tensor, Tensor),
    out: [usize; 4],
    out_is_rhs_dtype: bool,
    inputs: impl FnOnce(Binding, Binding, OutBinding) -> ConvolutionInputs<CudaRuntime>,
) -> Result<Tensor, ConvSetupError> {
    let (lhs, rhs) = (permute_nchw_to_nhwc(lhs), permute_nchw_to_nhwc(rhs));
    let dtype = if out_is_rhs_dtype {
        rhs.dtype
    } else {
        lhs.dtype
    };
    let result = empty_device_dtype(
        lhs.client.clone(),
        lhs.device.clone(),
        Shape::new(out),
        dtype,
    );
    let client = lhs.client.clone();
    let dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
        lhs: lhs.dtype.into(),
        rhs: rhs.dtype.into(),
        out: dtype.into(),
    });
    let args = ConvolutionArgs {
        stride,
        padding: g.pad,
        dilation: [1, 1],
    };
    let inputs = inputs(input(lhs), input(rhs), result.clone().binding());
    launch_ref::<CudaRuntime, 2>(&strategy(a), &client, inputs, args, dtypes)?;
    Ok(permute_nhwc_to_nchw(result))
}

fn input(t: Tensor) -> Binding {
    let dtype = t.dtype;
    InputBinding::new(t.binding(), dtype.into())
}

/// `x` (`[n, c_in, h, w]`) convolved with `w` (`[c_out, c_in, k_h, k_w]`).
pub(crate) fn forward(
    x: Tensor,
    w: Tensor,
    g: &ConvGeom,
    a: Algo,
) -> Result<Tensor, ConvSetupError> {
    let out = [g.batch, g.out_hw[0], g.out_hw[1], g.cout];
    launch(a, g, g.stride, (x, w), out, false, |input, weight, out| {
        ConvolutionInputs::Forward {
            input,
            weight,
            bias: None,
            out,
        }
    })
}

/// The input gradient of a stride-1 convolution from the output gradient `dy` (cubek's kernel
/// takes stride 1 only; a strided convolution spreads `dy` first).
pub(crate) fn grad_input(
    dy: Tensor,
    w: Tensor,
    g: &ConvGeom,
    a: Algo,
) -> Result<Tensor, ConvSetupError> {
    let out = [g.batch, g.in_hw[0], g.in_hw[1], g.cin];
    launch(
        a,
        g,
        [1, 1],
        (dy, w),
        out,
        false,
        |out_grad, weights, in_grad| ConvolutionInputs::BackwardData {
            out_grad,
            weights,
            in_grad,
        },
    )
}

/// The weight gradient (`[c_out, c_in, k_h, k_w]`) from the input `x` and the output
/// gradient `dy`.
pub(crate) fn grad_weight(
    x: Tensor,
    dy: Tensor,
    g: &ConvGeom,
    a: Algo,
) -> Result<Tensor, ConvSetupError> {
    let out = [g.cout, g.kernel[0], g.kernel[1], g.cin];
    launch(
        a,
        g,
        g.stride,
        (x, dy),
        out,
        true,
        |input, out_grad, weight_grad| ConvolutionInputs::BackwardWeight {
            input,
            out_grad,
            weight_grad,
        },
    )
}
