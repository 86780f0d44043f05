//! cubek's implicit-GEMM convolution passes with an explicit algorithm ([`Algo`]).
//!
//! Burn 0.21 exposes these kernels only through `ConvStrategy::ImplicitGemm`, which always
//! picks "simple sync" on WMMA tiles; the other algorithms sit in private modules. These are
//! the same launches as Burn's (burn-cubecl's `kernel/conv/*/implicit_gemm/launch.rs`): NCHW
//! tensors are viewed as NHWC, cubek computes into a new NHWC tensor, which is viewed back.
//! A shape or device an algorithm cannot handle is a setup error, never a launch.

use burn::tensor::{DType, Shape};
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

use super::tune_plan::Algo;
use super::ConvGeom;

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

fn args(g: &ConvGeom, stride: [usize; 2]) -> ConvolutionArgs<2> {
    ConvolutionArgs {
        stride,
        padding: g.pad,
        dilation: [1, 1],
    }
}

fn dtypes(lhs: DType, rhs: DType, out: DType) -> MatmulElems {
    MatmulElems::from_globals(&MatmulGlobalElems {
        lhs: lhs.into(),
        rhs: rhs.into(),
        out: out.into(),
    })
}

fn input(t: Tensor) -> InputBinding<CudaRuntime> {
    let dtype = t.dtype;
    InputBinding::new(t.binding(), dtype.into())
}

/// A new NHWC tensor of `shape` (NHWC) on `like`'s device.
fn empty_like(like: &Tensor, shape: [usize; 4], dtype: DType) -> Tensor {
    empty_device_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::new(shape),
        dtype,
    )
}

/// `x` (`[n, c_in, h, w]`) convolved with `w` (`[c_out, c_in, k_h, k_w]`).
pub(crate) fn forward(
    x: Tensor,
    w: Tensor,
    g: &ConvGeom,
    a: Algo,
) -> Result<Tensor, ConvSetupError> {
    let (x, w) = (permute_nchw_to_nhwc(x), permute_nchw_to_nhwc(w));
    let dtype = x.dtype;
    let out = empty_like(&x, [g.batch, g.out_hw[0], g.out_hw[1], g.cout], dtype);
    let client = x.client.clone();
    let d = dtypes(x.dtype, w.dtype, dtype);
    let inputs = ConvolutionInputs::Forward {
        input: input(x),
        weight: input(w),
        bias: None,
        out: out.clone().binding(),
    };
    launch_ref::<CudaRuntime, 2>(&strategy(a), &client, inputs, args(g, g.stride), d)?;
    Ok(permute_nhwc_to_nchw(out))
}

/// The input gradient of a stride-1 convolution from the output gradient `dy`. `stride`
/// must be `[1, 1]` (cubek's kernel); a strided convolution spreads `dy` first.
pub(crate) fn grad_input(
    dy: Tensor,
    w: Tensor,
    g: &ConvGeom,
    a: Algo,
) -> Result<Tensor, ConvSetupError> {
    let (dy, w) = (permute_nchw_to_nhwc(dy), permute_nchw_to_nhwc(w));
    let dtype = dy.dtype;
    let dx = empty_like(&dy, [g.batch, g.in_hw[0], g.in_hw[1], g.cin], dtype);
    let client = dy.client.clone();
    let d = dtypes(dy.dtype, w.dtype, dtype);
    let inputs = ConvolutionInputs::BackwardData {
        out_grad: input(dy),
        weights: input(w),
        in_grad: dx.clone().binding(),
    };
    launch_ref::<CudaRuntime, 2>(&strategy(a), &client, inputs, args(g, [1, 1]), d)?;
    Ok(permute_nhwc_to_nchw(dx))
}

/// The weight gradient (`[c_out, c_in, k_h, k_w]`) from the input `x` and the output
/// gradient `dy`.
pub(crate) fn grad_weight(
    x: Tensor,
    dy: Tensor,
    g: &ConvGeom,
    a: Algo,
) -> Result<Tensor, ConvSetupError> {
    let (x, dy) = (permute_nchw_to_nhwc(x), permute_nchw_to_nhwc(dy));
    let dtype = dy.dtype;
    let dw = empty_like(&x, [g.cout, g.kernel[0], g.kernel[1], g.cin], dtype);
    let client = x.client.clone();
    let d = dtypes(x.dtype, dy.dtype, dtype);
    let inputs = ConvolutionInputs::BackwardWeight {
        input: input(x),
        out_grad: input(dy),
        weight_grad: dw.clone().binding(),
    };
    launch_ref::<CudaRuntime, 2>(&strategy(a), &client, inputs, args(g, g.stride), d)?;
    Ok(permute_nhwc_to_nchw(dw))
}
