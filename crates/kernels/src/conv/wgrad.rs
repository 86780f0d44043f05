//! A convolution's weight gradient as one batched matmul per kernel tap.
//!
//! dW[:, :, i, j] = Σ_n dy[n] · x_tap(i, j)[n]ᵀ, where x_tap(i, j) is the padded input sampled
//! at tap (i, j) of every output position (`[n, c_in, out_h·out_w]`). Why: on an H200 the
//! backward pass of ResNet-18's CIFAR stem took 9x its forward with Burn's implicit-GEMM weight
//! gradient, whose 32x32 layers have few outputs (64 x 576) and a reduction over
//! batch x 32 x 32 = 262,144 values — few thread blocks for 132 SMs (benchmarks/RESULTS.md). Here
//! the batch is the matmul's batch dimension (256 independent products per tap, then a sum),
//! which fills the GPU at the cost of copying the input once per tap.
//!
//! Built from Burn's backend ops and a [`MatmulKernel`], so it is tested on the CPU backend
//! against Burn's own weight gradient.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{FloatDType, Shape, Slice, TensorMetadata};

use super::ConvGeom;
use crate::matmul::MatmulKernel;

fn range(start: usize, end: usize, step: usize) -> Slice {
    Slice {
        start: start as isize,
        end: Some(end as isize),
        step: step as isize,
    }
}

/// `x` (`[n, c, h, w]`) with `pad` zeros on both sides of each spatial axis.
fn pad<B: Backend>(x: FloatTensor<B>, pad: [usize; 2]) -> FloatTensor<B> {
    let s = x.shape();
    let [n, c, h, w] = [s[0], s[1], s[2], s[3]];
    let device = B::float_device(&x);
    let dtype = FloatDType::from(x.dtype());
    let mut x = x;
    if pad[0] > 0 {
        let z = || B::float_zeros(Shape::new([n, c, pad[0], w]), &device, dtype);
        x = B::float_cat(vec![z(), x, z()], 2);
    }
    if pad[1] > 0 {
        let z = || B::float_zeros(Shape::new([n, c, h + 2 * pad[0], pad[1]]), &device, dtype);
        x = B::float_cat(vec![z(), x, z()], 3);
    }
    x
}

/// The weight gradient `[c_out, c_in, k_h, k_w]` of the convolution `g` from its input `x` and
/// output gradient `dy`.
pub fn grad_weight_by_taps<B: Backend, M: MatmulKernel<B>>(
    x: FloatTensor<B>,
    dy: FloatTensor<B>,
    g: &ConvGeom,
) -> FloatTensor<B> {
    let [oh, ow] = g.out_hw;
    let p = oh * ow;
    let xp = pad::<B>(x, g.pad);
    let dy = B::float_reshape(dy, Shape::new([g.batch, g.cout, p]));
    let mut taps = Vec::with_capacity(g.kernel[0] * g.kernel[1]);
    for i in 0..g.kernel[0] {
        for j in 0..g.kernel[1] {
            let rows = range(i, i + g.stride[0] * (oh - 1) + 1, g.stride[0]);
            let cols = range(j, j + g.stride[1] * (ow - 1) + 1, g.stride[1]);
            let all = |d: usize| range(0, d, 1);
            let xt = B::float_slice(xp.clone(), &[all(g.batch), all(g.cin), rows, cols]);
            let xt = B::float_reshape(xt, Shape::new([g.batch, g.cin, p]));
            let part = M::matmul(dy.clone(), B::float_swap_dims(xt, 1, 2)); // [n, c_out, c_in]
            let tap = B::float_sum_dim(part, 0); // [1, c_out, c_in]
            taps.push(B::float_reshape(tap, Shape::new([g.cout, g.cin, 1])));
        }
    }
    let dw = B::float_cat(taps, 2);
    B::float_reshape(dw, Shape::new([g.cout, g.cin, g.kernel[0], g.kernel[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::BackendMatmul;
    use burn::backend::Flex;
    use burn::tensor::ops::{ConvOptions, ModuleOps};
    use burn::tensor::{DType, Distribution, Tensor, TensorPrimitive, Tolerance};

    type B = Flex;

    #[test]
    fn tap_matmuls_equal_burns_weight_gradient() {
        let device = Default::default();
        // (input hw, kernel, stride, padding)
        let cases = [
            ([8, 8], [3, 3], [1, 1], [1, 1]),
            ([8, 8], [3, 3], [2, 2], [1, 1]),
            ([8, 8], [1, 1], [2, 2], [0, 0]),
            ([7, 9], [3, 3], [2, 2], [1, 1]),
            ([9, 7], [3, 3], [3, 2], [1, 0]),
            ([11, 11], [7, 7], [2, 2], [3, 3]),
        ];
        for (hw, k, s, p) in cases {
            let g = ConvGeom::new([3, 5, hw[0], hw[1]], [4, 5, k[0], k[1]], s, p).expect("geom");
            let x = Tensor::<B, 4>::random([3, 5, hw[0], hw[1]], Distribution::Default, &device);
            let w = Tensor::<B, 4>::zeros([4, 5, k[0], k[1]], &device);
            let dy = Tensor::<B, 4>::random(
                [3, 4, g.out_hw[0], g.out_hw[1]],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let prim = |t: Tensor<B, 4>| t.into_primitive().tensor();
            let burns = B::conv2d_weight_backward(
                prim(x.clone()),
                prim(w),
                prim(dy.clone()),
                ConvOptions::new(s, p, [1, 1], 1),
            );
            let ours = grad_weight_by_taps::<B, BackendMatmul>(prim(x), prim(dy), &g);
            let a = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(burns)).to_data();
            let b = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(ours)).to_data();
            a.assert_approx_eq::<f32>(&b, Tolerance::default());
        }
    }

    /// bf16 operands (what `--conv-precision bf16` hands the tuned weight gradient): the
    /// padding and the tap slices keep the operands' dtype, and the result matches the f32
    /// gradient of the same bf16-rounded numbers to bf16 precision.
    #[test]
    fn tap_matmuls_take_bf16_operands() {
        let device = Default::default();
        let g = ConvGeom::new([2, 8, 6, 6], [4, 8, 3, 3], [1, 1], [1, 1]).expect("geom");
        let x = Tensor::<B, 4>::random([2, 8, 6, 6], Distribution::Default, &device);
        let dy = Tensor::<B, 4>::random([2, 4, 6, 6], Distribution::Normal(0.0, 1.0), &device);
        let bf16 = |t: Tensor<B, 4>| t.cast(DType::BF16);
        let (x, dy) = (bf16(x), bf16(dy));
        let prim = |t: Tensor<B, 4>| t.into_primitive().tensor();
        let f32 = |t: Tensor<B, 4>| prim(t.cast(DType::F32));
        let reference =
            grad_weight_by_taps::<B, BackendMatmul>(f32(x.clone()), f32(dy.clone()), &g);
        let ours = grad_weight_by_taps::<B, BackendMatmul>(prim(x), prim(dy), &g);
        let ours = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(ours));
        assert_eq!(ours.dtype(), DType::BF16);
        let reference = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(reference));
        ours.cast(DType::F32)
            .to_data()
            .assert_approx_eq::<f32>(&reference.to_data(), Tolerance::rel_abs(2e-2, 5e-2));
    }
}
