//! The input gradient of a strided convolution as a stride-1 one.
//!
//! For a convolution with stride s, the input gradient equals the input gradient of the same
//! convolution with stride 1 when the output gradient is spread out first: element (i, j) moves
//! to (i·s_h, j·s_w) of a zero tensor the size of the stride-1 output. Why bother: on CUDA, Burn's
//! implicit-GEMM input gradient handles stride 1 only and sends strided ones to an autotuned
//! transposed convolution, which cost ~90 s of ResNet-18's first training step on an H200
//! (benchmarks/RESULTS.md). The stride-1 form does s_h·s_w times the arithmetic of the strided
//! one, for the few strided layers of a ResNet.
//!
//! Built from Burn's backend ops only (reshape, zeros, concatenation, slice), so the identity is
//! tested on the CPU backend against Burn's strided input gradient.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{FloatDType, Shape, Slice, TensorMetadata};

/// Spreads `dy` (`[n, c, h, w]`) by `stride` into a zero tensor of `[n, c, full[0], full[1]]`
/// (`full`: the stride-1 output size of the convolution, at least `(h-1)·s_h + 1` by
/// `(w-1)·s_w + 1`).
pub fn spread<B: Backend>(
    dy: FloatTensor<B>,
    stride: [usize; 2],
    full: [usize; 2],
) -> FloatTensor<B> {
    let shape = dy.shape();
    let [n, c, h, w] = [shape[0], shape[1], shape[2], shape[3]];
    let device = B::float_device(&dy);
    let dtype = FloatDType::from(dy.dtype());
    let [sh, sw] = stride;
    // [n, c, h, 1, w, 1] -> pad the unit axes with zeros to s_h and s_w -> [n, c, h·s_h, w·s_w].
    let mut t = B::float_reshape(dy, Shape::new([n, c, h, 1, w, 1]));
    if sh > 1 {
        let z = B::float_zeros(Shape::new([n, c, h, sh - 1, w, 1]), &device, dtype);
        t = B::float_cat(vec![t, z], 3);
    }
    if sw > 1 {
        let z = B::float_zeros(Shape::new([n, c, h, sh, w, sw - 1]), &device, dtype);
        t = B::float_cat(vec![t, z], 5);
    }
    let t = B::float_reshape(t, Shape::new([n, c, h * sh, w * sw]));
    // h·s_h >= full: the stride-1 output is one past the last strided position at most s-1 short.
    let keep = |end: usize| Slice {
        start: 0,
        end: Some(end as isize),
        step: 1,
    };
    B::float_slice(
        t,
        &[
            keep(n),
            keep(c),
            keep(full[0].min(h * sh)),
            keep(full[1].min(w * sw)),
        ],
    )
}

/// `dy` of convolution `g` spread to the convolution's stride-1 output size: the output
/// gradient whose stride-1 input gradient is `g`'s input gradient.
pub fn spread_for<B: Backend>(dy: FloatTensor<B>, g: &super::ConvGeom) -> FloatTensor<B> {
    let full = [0, 1].map(|i| g.in_hw[i] + 2 * g.pad[i] - g.kernel[i] + 1);
    spread::<B>(dy, g.stride, full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::ops::{ConvOptions, ModuleOps};
    use burn::tensor::{Distribution, Tensor, TensorPrimitive, Tolerance};

    type B = Flex;

    fn prim(t: Tensor<B, 4>) -> FloatTensor<B> {
        t.into_primitive().tensor()
    }

    #[test]
    fn strided_input_gradient_equals_stride_one_on_the_spread_gradient() {
        let device = Default::default();
        // (input hw, kernel, stride, padding): ResNet's strided layers plus odd and asymmetric ones.
        let cases = [
            ([8, 8], [3, 3], [2, 2], [1, 1]),
            ([8, 8], [1, 1], [2, 2], [0, 0]),
            ([7, 9], [3, 3], [2, 2], [1, 1]),
            ([9, 7], [3, 3], [3, 2], [1, 0]),
            ([11, 11], [7, 7], [2, 2], [3, 3]),
            ([6, 6], [3, 3], [1, 2], [1, 1]),
        ];
        for (hw, k, s, p) in cases {
            let out = |i: usize| (hw[i] + 2 * p[i] - k[i]) / s[i] + 1;
            let full = |i: usize| hw[i] + 2 * p[i] - k[i] + 1;
            let x = Tensor::<B, 4>::zeros([2, 3, hw[0], hw[1]], &device);
            let w = Tensor::<B, 4>::random([4, 3, k[0], k[1]], Distribution::Default, &device);
            let dy = Tensor::<B, 4>::random(
                [2, 4, out(0), out(1)],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let strided = B::conv2d_x_backward(
                prim(x.clone()),
                prim(w.clone()),
                prim(dy.clone()),
                ConvOptions::new(s, p, [1, 1], 1),
            );
            let g = super::super::ConvGeom::new([2, 3, hw[0], hw[1]], [4, 3, k[0], k[1]], s, p)
                .expect("geom");
            let spread_dy = spread_for::<B>(prim(dy), &g);
            let got = spread_dy.shape();
            assert_eq!(
                [got[0], got[1], got[2], got[3]],
                [2, 4, full(0), full(1)],
                "{hw:?} {k:?} {s:?} {p:?}"
            );
            let unit = B::conv2d_x_backward(
                prim(x),
                prim(w),
                spread_dy,
                ConvOptions::new([1, 1], p, [1, 1], 1),
            );
            let a = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(strided)).to_data();
            let b = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(unit)).to_data();
            a.assert_approx_eq::<f32>(&b, Tolerance::default());
        }
    }
}
