//! The running-statistics update of `super::running` as one cubecl kernel per BatchNorm, from
//! the mean and inverse deviation cuDNN saved (`--cuda-bn cudnn-fused`), where Burn's ops take
//! about a dozen launches. Same formula; NVRTC may contract `a * b + c` into an FMA, so it
//! agrees with Burn's ops to rounding (`resnet conv-check` compares the running statistics).

use std::any::TypeId;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, Tensor as BurnTensor, TensorPrimitive};
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
type AdTensor = FloatTensor<Autodiff<CudaPlain>>;

/// `mean_out = mean_in * keep + batch_mean * m`;
/// `var_out = var_in * keep + max(1 / invstd^2 - eps, 0) * m_unbiased`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn running_kernel(
    mean_in: &Tensor<f32>,
    var_in: &Tensor<f32>,
    batch_mean: &Tensor<f32>,
    invstd: &Tensor<f32>,
    mean_out: &mut Tensor<f32>,
    var_out: &mut Tensor<f32>,
    keep: f32,
    m: f32,
    m_unbiased: f32,
    eps: f32,
) {
    if ABSOLUTE_POS >= mean_in.len() {
        terminate!();
    }
    let i = ABSOLUTE_POS;
    let s = invstd[i];
    let mut var = 1.0 / (s * s) - eps;
    if var < 0.0 {
        var = 0.0;
    }
    mean_out[i] = mean_in[i] * keep + batch_mean[i] * m;
    var_out[i] = var_in[i] * keep + var * m_unbiased;
}

/// The new `[running mean, running var]` from cuDNN's saved `[mean, invstd]` and the old
/// running statistics, with `[momentum, eps, unbiased factor]`; `None` (nothing launched) unless
/// `k` chose `cudnn-fused`, the backend is `Autodiff<CudaPlain>` and all four are f32 vectors
/// of one length.
pub(crate) fn update<B: Backend>(
    k: &KernelChoice,
    [mean, invstd]: [&BurnTensor<B, 1>; 2],
    [running_mean, running_var]: [&BurnTensor<B, 1>; 2],
    [momentum, eps, correction]: [f64; 3],
) -> Option<[BurnTensor<B, 1>; 2]> {
    if k.cuda_bn != CudaBn::CudnnFused || TypeId::of::<B>() != TypeId::of::<Autodiff<CudaPlain>>() {
        return None;
    }
    let all = [mean, invstd, running_mean, running_var];
    let c = mean.dims()[0];
    if all
        .iter()
        .any(|t| t.dtype() != DType::F32 || t.dims()[0] != c)
    {
        return None;
    }
    let cube = |t: &BurnTensor<B, 1>| -> Cube {
        let t: AdTensor = cast(float_primitive(t.clone())).expect("B is Autodiff<CudaPlain>");
        contiguous(t.primitive)
    };
    let [mean, invstd, rm, rv] = all.map(cube);
    let client = rm.client.clone();
    let fresh = || {
        empty_device_contiguous_dtype(
            client.clone(),
            rm.device.clone(),
            Shape::new([c]),
            DType::F32,
        )
    };
    let (mean_out, var_out) = (fresh(), fresh());
    let dim = CubeDim::new(&client, c);
    let count = calculate_cube_count_elemwise(&client, c, dim);
    let arg = |t: &Cube| t.clone().into_tensor_arg();
    running_kernel::launch::<CudaRuntime>(
        &client,
        count,
        dim,
        arg(&rm),
        arg(&rv),
        arg(&mean),
        arg(&invstd),
        arg(&mean_out),
        arg(&var_out),
        (1.0 - momentum) as f32,
        momentum as f32,
        (momentum * correction) as f32,
        eps as f32,
    );
    let back = |t: Cube| -> BurnTensor<B, 1> {
        let t = BurnTensor::<Autodiff<CudaPlain>, 1>::from_inner(BurnTensor::from_primitive(
            TensorPrimitive::Float(t),
        ));
        let t: FloatTensor<B> = cast(float_primitive(t)).expect("same type");
        BurnTensor::from_primitive(TensorPrimitive::Float(t))
    };
    Some([back(mean_out), back(var_out)])
}
