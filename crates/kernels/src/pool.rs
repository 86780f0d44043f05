//! Max pooling in evaluation on the CPU (the ImageNet stem's 3x3/2 pool).
//!
//! Burn 0.21's flex backend runs `max_pool2d` as its `max_pool2d_with_indices` loop, tracking
//! each window's argmax with a branchy scalar loop even when no gradient will need it: ~15% of a
//! ResNet-18 ImageNet-stem evaluation here. In evaluation (plain `Flex`, f32, no dilation or
//! ceil mode, symmetric padding) this module computes the maximum alone, a row of windows at a
//! time. The values are exactly Burn's: the maximum of the window's elements inside the image
//! (padding never wins: Burn pads with −∞), found with the same `v > max` comparison from −∞
//! (so a NaN never wins, as in Burn's loop).
//! Training (`Autodiff<Flex>`) runs [`crate::pool_train`]'s node: Burn's with-indices values
//! and gradient, bit for bit, without its 64-bit index loop and single-threaded scatter.

use std::any::TypeId;

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::nn::pool::MaxPool2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};

use crate::backends::FlexTrain;
use crate::cast::{cast, float_primitive};
use crate::choice::{CpuConv, KernelChoice};

pub use crate::geom::PoolGeom;

/// `pool.forward(x)` by this crate's kernel where it applies (see the module docs), else Burn's.
pub fn max_pool2d<B: Backend>(k: &KernelChoice, pool: &MaxPool2d, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let pad = match pool.padding {
        PaddingConfig2d::Valid => Some([0, 0]),
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            Some([top, left])
        }
        _ => None,
    };
    let training = TypeId::of::<B>() == TypeId::of::<FlexTrain>();
    let ours = (TypeId::of::<B>() == TypeId::of::<Flex>() || training)
        && x.dtype() == DType::F32
        && k.cpu_conv != CpuConv::Burn
        && pool.dilation == [1, 1]
        && !pool.ceil_mode;
    let geom = pad.and_then(|pad| PoolGeom::new([h, w], pool.kernel_size, pool.stride, pad));
    let (true, Some(g)) = (ours, geom) else {
        return pool.forward(x);
    };
    if training {
        let x =
            cast::<_, FloatTensor<FlexTrain>>(float_primitive(x)).expect("checked: B is FlexTrain");
        let y = crate::pool_train::max_pool2d(x, g);
        return Tensor::from_primitive(TensorPrimitive::Float(cast(y).expect("same type")));
    }
    let x = cast::<_, FlexTensor>(float_primitive(x))
        .expect("checked: B is Flex")
        .to_contiguous();
    let y = max_pool_planes(&g, x.storage::<f32>());
    let y = FlexTensor::from_data(TensorData::new(y, [n, c, g.out_hw[0], g.out_hw[1]]));
    Tensor::from_primitive(TensorPrimitive::Float(cast(y).expect("same type")))
}

/// Max pooling of consecutive `H x W` planes, in parallel over planes.
pub fn max_pool_planes(g: &PoolGeom, x: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;
    let ([h, w], [oh, ow]) = (g.in_hw, g.out_hw);
    let plane_in = h * w;
    let plane_out = oh * ow;
    if plane_in == 0 || plane_out == 0 {
        return Vec::new();
    }
    assert_eq!(x.len() % plane_in, 0, "max pool: input is not whole planes");
    let planes = x.len() / plane_in;
    let mut y = vec![0.0f32; planes * plane_out];
    // ~16K output values per task, so small planes are not one task each.
    let per = (16384 / plane_out).max(1);
    y.par_chunks_mut(per * plane_out)
        .zip(x.par_chunks(per * plane_in))
        .for_each(|(y, x)| {
            for (y, x) in y.chunks_exact_mut(plane_out).zip(x.chunks_exact(plane_in)) {
                pool_plane(g, x, y);
            }
        });
    y
}

/// One plane: for each output row, the window rows inside the image, and for each output
/// pixel the window columns inside it, scanned in Burn's order (rows, then columns).
fn pool_plane(g: &PoolGeom, x: &[f32], y: &mut [f32]) {
    let ([h, w], [kh, kw], [sh, sw], [ph, pw], [_, ow]) =
        (g.in_hw, g.kernel, g.stride, g.pad, g.out_hw);
    for (oy, out_row) in y.chunks_exact_mut(ow).enumerate() {
        let y0 = (oy * sh).saturating_sub(ph);
        let y1 = (oy * sh + kh).saturating_sub(ph).min(h);
        for (ox, out) in out_row.iter_mut().enumerate() {
            let x0 = (ox * sw).saturating_sub(pw);
            let x1 = (ox * sw + kw).saturating_sub(pw).min(w);
            let mut m = f32::NEG_INFINITY;
            for iy in y0..y1 {
                for &v in &x[iy * w + x0..iy * w + x1] {
                    if v > m {
                        m = v;
                    }
                }
            }
            *out = m;
        }
    }
}
