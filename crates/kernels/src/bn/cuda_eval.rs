//! Evaluation-mode BatchNorm on CUDA (`--cuda-bn cudnn-fused`), with the residual add and the
//! ReLU after it, as one cubecl kernel and one pass over the activation. The model's generic
//! code takes about a dozen launches per BatchNorm (the per-channel scale and shift, their
//! per-row copies, a multiply and an add over the activation, then Burn's add and ReLU: five
//! passes over it); PyTorch's eval runs cuDNN's inference call, the add and an in-place ReLU.
//!
//! Same formula as the generic code (`scale = gamma / sqrt(var + eps)`, `shift = beta -
//! mean * scale`, `y = x * scale + shift`), computed per element from the channel's four
//! values; NVRTC may contract `x * scale + shift` into an FMA, so it agrees to rounding
//! (`resnet conv-check` compares it: the `eval` column).

use std::any::TypeId;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor as BurnTensor, TensorPrimitive};
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::cubecl::{calculate_cube_count_elemwise, CubeDim};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;

use crate::backends::CudaPlain;
use crate::cast::{cast, float_primitive};
use crate::choice::{CudaBn, KernelChoice};
use crate::cudnn::device::contiguous;

type Cube = CubeTensor<CudaRuntime>;

/// `y = act(x * scale[c] + shift[c] (+ residual))` over NCHW, `c = (i / hw) % channels`.
#[cube(launch)]
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
fn eval_kernel(
    x: &Tensor<f32>,
    residual: &Tensor<f32>,
    gamma: &Tensor<f32>,
    beta: &Tensor<f32>,
    mean: &Tensor<f32>,
    var: &Tensor<f32>,
    y: &mut Tensor<f32>,
    hw: usize,
    channels: usize,
    eps: f32,
    #[comptime] add: bool,
    #[comptime] relu: bool,
) {
    if ABSOLUTE_POS >= y.len() {
        terminate!();
    }
    let i = ABSOLUTE_POS;
    let c = (i / hw) % channels;
    let scale = gamma[c] / f32::sqrt(var[c] + eps);
    let shift = beta[c] - mean[c] * scale;
    let mut v = x[i] * scale + shift;
    if add {
        v += residual[i];
    }
    if relu {
        if v <= 0.0 {
            v = 0.0;
        }
    }
    y[i] = v;
}

/// Evaluation-mode BatchNorm of `x` with `params()` = `[gamma, beta, running mean, running
/// var]`, then `+ residual` and a ReLU when asked: `Some(y)`, a fresh tensor, when `k` chose
/// `cudnn-fused`, the backend is [`CudaPlain`] and every tensor is f32 of matching size; `None`
/// (nothing launched) otherwise.
pub(crate) fn eval<B: Backend>(
    k: &KernelChoice,
    x: &BurnTensor<B, 4>,
    params: impl FnOnce() -> [BurnTensor<B, 1>; 4],
    eps: f64,
    residual: Option<&BurnTensor<B, 4>>,
    relu: bool,
) -> Option<BurnTensor<B, 4>> {
    if k.cuda_bn != CudaBn::CudnnFused || TypeId::of::<B>() != TypeId::of::<CudaPlain>() {
        return None;
    }
    let dims = x.dims();
    let [_, c, h, w] = dims;
    let params = params();
    if x.dtype() != DType::F32
        || params
            .iter()
            .any(|p| p.dtype() != DType::F32 || p.dims() != [c])
        || residual.is_some_and(|r| r.dtype() != DType::F32 || r.dims() != dims)
    {
        return None;
    }
    let cube = |t: B::FloatTensorPrimitive| -> Cube {
        contiguous(cast(t).expect("B is CudaPlain, whose float tensors are cubecl's"))
    };
    let xc = cube(float_primitive(x.clone()));
    let [gamma, beta, mean, var] = params.map(|p| cube(float_primitive(p)));
    let rc = residual.map(|r| cube(float_primitive(r.clone())));
    let client = xc.client.clone();
    let y = empty_device_contiguous_dtype(
        client.clone(),
        xc.device.clone(),
        xc.meta.shape().clone(),
        DType::F32,
    );
    let n = xc.meta.num_elements();
    let dim = CubeDim::new(&client, n);
    let count = calculate_cube_count_elemwise(&client, n, dim);
    let arg = |t: &Cube| t.clone().into_tensor_arg();
    // Without a residual, `x` stands in for it (not read).
    let r = rc.as_ref().unwrap_or(&xc);
    eval_kernel::launch::<CudaRuntime>(
        &client,
        count,
        dim,
        arg(&xc),
        arg(r),
        arg(&gamma),
        arg(&beta),
        arg(&mean),
        arg(&var),
        arg(&y),
        h * w,
        c,
        eps as f32,
        rc.is_some(),
        relu,
    );
    let y: B::FloatTensorPrimitive = cast(y).expect("same type");
    Some(BurnTensor::from_primitive(TensorPrimitive::Float(y)))
}
