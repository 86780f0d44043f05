//! Evaluation-mode convolution with the BatchNorm after it folded in (CPU, f32).
//!
//! In evaluation a BatchNorm is a per-channel affine map `y = x·scale + shift`, so
//! `bn(conv(x, W)) = conv(x, W·scale) + shift`: the scale goes into the weights (Cout·K
//! multiplies, nothing next to the convolution itself) and the shift, the block's residual add
//! and the ReLU into the write of the convolution's output ([`cpu::Epilogue`]). Three passes over
//! the activation (BatchNorm, add, ReLU) become none. Exact to float rounding: the products
//! are rounded once more (W·scale) and the scale is applied before the sum instead of after.

use std::any::TypeId;

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};

use super::{cpu, geometry, record, winograd};
use crate::bn::cpu::fold;
use crate::cast::{cast, float_primitive};
use crate::choice::{CpuBn, CpuConv, KernelChoice};

/// Whether [`conv2d_bn_eval`] handles `conv` on `x`: the plain flex backend (evaluation), f32,
/// this crate's convolution and the fused BatchNorm chosen, and a geometry the kernels take.
pub fn folds<B: Backend>(k: &KernelChoice, conv: &Conv2d<B>, x: &Tensor<B, 4>) -> bool {
    TypeId::of::<B>() == TypeId::of::<Flex>()
        && x.dtype() == DType::F32
        && k.cpu_bn == CpuBn::Fused
        && k.cpu_conv != CpuConv::Burn
        && geometry(conv, x.dims()).is_some()
}

/// The running statistics and affine parameters of an evaluation-mode BatchNorm.
pub struct BnEval<B: Backend> {
    /// gamma, `[C]`.
    pub gamma: Tensor<B, 1>,
    /// beta, `[C]`.
    pub beta: Tensor<B, 1>,
    /// Running mean, `[C]`.
    pub mean: Tensor<B, 1>,
    /// Running variance, `[C]`.
    pub var: Tensor<B, 1>,
    /// Added to the variance before the square root.
    pub eps: f64,
}

/// `bn(conv(x))`, plus `residual`, then a ReLU when `relu` — in one pass, the BatchNorm folded
/// into the convolution. Call only when [`folds`] said yes.
pub fn conv2d_bn_eval<B: Backend>(
    k: &KernelChoice,
    conv: &Conv2d<B>,
    x: Tensor<B, 4>,
    bn: BnEval<B>,
    residual: Option<Tensor<B, 4>>,
    relu: bool,
) -> Tensor<B, 4> {
    let g = geometry(conv, x.dims()).expect("folds() checked the geometry");
    record::seen(g);
    let values = |t: Tensor<B, 1>| -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32 data after convert")
    };
    let (scale, shift) = fold(
        &values(bn.gamma),
        &values(bn.beta),
        &values(bn.mean),
        &values(bn.var),
        bn.eps,
    );
    let flex = |t: Tensor<B, 4>| -> FlexTensor {
        cast::<_, FlexTensor>(float_primitive(t))
            .expect("folds() checked B is Flex")
            .to_contiguous()
    };
    let (x, w) = (flex(x), flex(conv.weight.val()));
    let mut w = w.storage::<f32>().to_vec();
    for (row, s) in w.chunks_exact_mut(g.k().max(1)).zip(&scale) {
        row.iter_mut().for_each(|v| *v *= s);
    }
    let residual = residual.map(flex);
    let epilogue = cpu::Epilogue {
        shift: &shift,
        residual: residual.as_ref().map(|r| r.storage::<f32>()),
        relu,
    };
    let x = x.storage::<f32>();
    let y = if k.cpu_conv == CpuConv::Winograd && winograd::pays(&g) {
        winograd::forward_then(&g, x, &w, Some(&epilogue))
    } else {
        let skip = k.cpu_conv != CpuConv::GemmAllTaps;
        cpu::forward_then(&g, x, &w, skip, Some(&epilogue))
    };
    let shape = [g.batch, g.cout, g.out_hw[0], g.out_hw[1]];
    let y = FlexTensor::from_data(TensorData::new(y, shape));
    Tensor::from_primitive(TensorPrimitive::Float(cast(y).expect("same type")))
}
