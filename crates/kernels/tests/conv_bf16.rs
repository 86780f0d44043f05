//! `--conv-precision bf16` on the CPU: the forward pass and both gradients must be what a bf16
//! kernel computes — Burn's f32 convolution of the bf16-rounded operands, rounded to bf16 —
//! and every value that leaves the convolution must be a bf16 value. The precision travels in
//! the `KernelChoice` of each call, so f32 and bf16 calls can sit side by side.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::{Tensor, TensorData};
use common::values;
use resnet_kernels::precision::round_bf16;
use resnet_kernels::{conv, ConvPrecision, KernelChoice};

fn bf16() -> KernelChoice {
    KernelChoice::default().with_precision(ConvPrecision::Bf16)
}

type B = Autodiff<Flex>;

fn rounded(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| round_bf16(x)).collect()
}

fn to_vec<const D: usize, K: burn::tensor::backend::Backend>(t: Tensor<K, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("f32")
}

/// Ours against the reference: equal up to one bf16 step (the f32 sums before the final
/// rounding may differ in their last bits, which can move a value across a rounding boundary),
/// and every one of ours a bf16 value.
fn assert_bf16_close(what: &str, ours: &[f32], reference: &[f32]) {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    let scale = reference.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let mut exact = 0;
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        assert_eq!(round_bf16(*a), *a, "{what}[{i}] = {a} is not a bf16 value");
        let step = a.abs().max(b.abs()) / 128.0;
        assert!(
            (a - b).abs() <= step + 1e-5 * scale,
            "{what}[{i}]: ours {a}, reference {b}"
        );
        exact += usize::from(a == b);
    }
    assert!(
        exact * 10 >= ours.len() * 9,
        "{what}: only {exact} of {} values match the reference exactly",
        ours.len()
    );
}

fn check(
    kernel: usize,
    stride: usize,
    pad: usize,
    hw: [usize; 2],
    batch: usize,
    cin: usize,
    cout: usize,
) {
    let device = Default::default();
    let name = format!("k{kernel} s{stride} p{pad} {hw:?} batch {batch} {cin}->{cout}");
    let w_shape = [cout, cin, kernel, kernel];
    let x_shape = [batch, cin, hw[0], hw[1]];
    let w = values(w_shape.iter().product(), 3);
    let x = values(x_shape.iter().product(), 5);
    let layer_with = |w: &[f32]| -> Conv2d<B> {
        let mut l: Conv2d<B> = Conv2dConfig::new([cin, cout], [kernel; 2])
            .with_stride([stride; 2])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_bias(false)
            .init(&device);
        l.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(w.to_vec(), w_shape),
            &device,
        ));
        l
    };
    // Ours, in bf16 mode, with an upstream gradient that is already bf16 (as it would be
    // coming out of the next bf16 convolution).
    let ours_layer = layer_with(&w);
    let xt = Tensor::<B, 4>::from_data(TensorData::new(x.clone(), x_shape), &device).require_grad();
    let y = conv::conv2d(&bf16(), &ours_layer, xt.clone());
    let r = Tensor::<B, 4>::from_data(
        TensorData::new(rounded(&values(y.shape().num_elements(), 9)), y.dims()),
        &device,
    );
    let grads = (y.clone() * r.clone()).sum().backward();
    let (y_ours, dx_ours, dw_ours) = (
        to_vec(y),
        to_vec(xt.grad(&grads).expect("dx")),
        to_vec(ours_layer.weight.val().grad(&grads).expect("dw")),
    );

    // Reference: Burn's own f32 convolution on the rounded operands, results rounded.
    let ref_layer = layer_with(&rounded(&w));
    let xr =
        Tensor::<B, 4>::from_data(TensorData::new(rounded(&x), x_shape), &device).require_grad();
    let yr = ref_layer.forward(xr.clone());
    let grads = (yr.clone() * r).sum().backward();
    let y_ref = rounded(&to_vec(yr));
    let dx_ref = rounded(&to_vec(xr.grad(&grads).expect("dx")));
    let dw_ref = rounded(&to_vec(ref_layer.weight.val().grad(&grads).expect("dw")));

    assert_bf16_close(&format!("{name} forward"), &y_ours, &y_ref);
    assert_bf16_close(&format!("{name} grad input"), &dx_ours, &dx_ref);
    assert_bf16_close(&format!("{name} grad weight"), &dw_ours, &dw_ref);

    // The inference path (no autodiff) rounds the same way.
    let inner: Conv2d<Flex> = ours_layer.valid();
    let xi = Tensor::<Flex, 4>::from_data(TensorData::new(x.clone(), x_shape), &device);
    assert_bf16_close(
        &format!("{name} inference forward"),
        &to_vec(conv::conv2d(&bf16(), &inner, xi)),
        &y_ref,
    );
}

#[test]
fn bf16_convolutions_round_operands_and_results_in_all_three_passes() {
    for (kernel, stride, pad, hw) in [
        (3, 1, 1, [8, 8]),
        (3, 2, 1, [9, 8]),
        (1, 2, 0, [8, 6]),
        (7, 2, 3, [12, 11]),
        (3, 1, 1, [17, 20]),
    ] {
        check(kernel, stride, pad, hw, 3, 6, 5);
    }

    // And in f32: not a single value rounded.
    let device = Default::default();
    let layer: Conv2d<Flex> = Conv2dConfig::new([4, 4], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(&device);
    let x = Tensor::<Flex, 4>::from_data(
        TensorData::new(values(2 * 4 * 36, 1), [2, 4, 6, 6]),
        &device,
    );
    let y = to_vec(conv::conv2d(&KernelChoice::default(), &layer, x));
    let off_grid = y.iter().filter(|v| round_bf16(**v) != **v).count();
    assert!(
        off_grid > y.len() / 2,
        "f32 results look rounded ({off_grid} of {})",
        y.len()
    );
}
