//! The CPU im2col + GEMM convolution against Burn's reference convolution: forward output and
//! both gradients, for strides 1/2, kernels 1/3/7, padding 0..3, odd and non-square sizes.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::{Tensor, TensorData};
use common::values;
use resnet_kernels::{conv, KernelChoice};

type B = Autodiff<Flex>;

struct Case {
    batch: usize,
    cin: usize,
    cout: usize,
    hw: [usize; 2],
    kernel: usize,
    stride: usize,
    pad: usize,
}

fn assert_close(what: &str, ours: &[f32], reference: &[f32]) {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    let scale = reference.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * scale,
            "{what}[{i}]: ours {a}, burn {b} (scale {scale})"
        );
    }
}

fn check(case: &Case) {
    let device = Default::default();
    let [h, w] = case.hw;
    let mut layer: Conv2d<B> = Conv2dConfig::new([case.cin, case.cout], [case.kernel; 2])
        .with_stride([case.stride; 2])
        .with_padding(PaddingConfig2d::Explicit(
            case.pad, case.pad, case.pad, case.pad,
        ))
        .with_bias(false)
        .init(&device);
    let w_shape = [case.cout, case.cin, case.kernel, case.kernel];
    let weight = values(w_shape.iter().product(), 7);
    layer.weight = Param::from_tensor(Tensor::from_data(TensorData::new(weight, w_shape), &device));
    let x_shape = [case.batch, case.cin, h, w];
    let x_data = TensorData::new(values(x_shape.iter().product(), 11), x_shape);

    let run = |fast: bool| {
        let x = Tensor::<B, 4>::from_data(x_data.clone(), &device).require_grad();
        let y = if fast {
            conv::conv2d(&KernelChoice::default(), &layer, x.clone())
        } else {
            layer.forward(x.clone())
        };
        // A loss with a different weight per output element, so every gradient entry matters.
        let r = Tensor::<B, 4>::from_data(
            TensorData::new(values(y.shape().num_elements(), 13), y.dims()),
            &device,
        );
        let grads = (y.clone() * r).sum().backward();
        let dx = x.grad(&grads).expect("input gradient");
        let dw = layer.weight.val().grad(&grads).expect("weight gradient");
        let f = |d: TensorData| d.to_vec::<f32>().expect("f32");
        (
            f(y.into_data()),
            f(dx.into_data()),
            f(dw.into_data()),
            y_dims(&layer, case),
        )
    };
    let (y, dx, dw, dims) = run(true);
    let (y_ref, dx_ref, dw_ref, _) = run(false);
    let name = format!(
        "k{} s{} p{} {}x{} cin {} cout {} batch {} -> {:?}",
        case.kernel, case.stride, case.pad, h, w, case.cin, case.cout, case.batch, dims
    );
    assert_close(&format!("{name} forward"), &y, &y_ref);
    assert_close(&format!("{name} grad input"), &dx, &dx_ref);
    assert_close(&format!("{name} grad weight"), &dw, &dw_ref);

    // Inference backend (no autodiff): the plain forward path.
    let inner: Conv2d<Flex> = layer.valid();
    let x = Tensor::<Flex, 4>::from_data(x_data.clone(), &device);
    let ours = conv::conv2d(&KernelChoice::default(), &inner, x.clone())
        .into_data()
        .to_vec::<f32>()
        .expect("f32");
    let reference = inner.forward(x).into_data().to_vec::<f32>().expect("f32");
    assert_close(&format!("{name} inference forward"), &ours, &reference);
}

fn y_dims(_layer: &Conv2d<B>, c: &Case) -> [usize; 2] {
    let out = |s: usize| (s + 2 * c.pad - c.kernel) / c.stride + 1;
    [out(c.hw[0]), out(c.hw[1])]
}

#[test]
fn gemm_convolution_matches_burn_forward_and_gradients() {
    let cases = [
        // kernel, stride, pad over the shapes a ResNet uses, plus odd / non-square inputs.
        (1, 1, 0, [8, 8]),
        (1, 2, 0, [9, 7]),
        (3, 1, 1, [8, 8]),
        (3, 2, 1, [9, 8]),
        (3, 1, 0, [5, 7]),
        (3, 2, 2, [6, 5]),
        (7, 2, 3, [17, 15]),
        (7, 1, 0, [7, 7]),
        (3, 3, 1, [10, 11]),
        // Output width >= 16 takes the row-wise im2col/col2im, narrower the gather table.
        (3, 1, 1, [17, 20]),
        (3, 2, 1, [9, 34]),
        (7, 2, 3, [12, 37]),
        (1, 2, 0, [6, 33]),
        // Taps that read only padding (skipped on AVX-512): 1x1 and 2x2 -> 1x1 maps, a
        // one-row strip in both im2col variants, a 5x5 kernel on a 2x3 map.
        (3, 1, 1, [1, 1]),
        (3, 2, 1, [2, 2]),
        (3, 1, 1, [1, 6]),
        (3, 1, 1, [1, 17]),
        (5, 1, 2, [2, 3]),
        // 3x3 stride 1 with outputs of 8x8 or more: Winograd by default on AVX-512 (odd
        // sizes crop the last tile row and column; padding 0 to 2).
        (3, 1, 0, [11, 13]),
        (3, 1, 2, [8, 9]),
        (3, 1, 1, [32, 32]),
    ];
    for (kernel, stride, pad, hw) in cases {
        for (batch, cin, cout) in [(3, 5, 4), (1, 2, 7)] {
            check(&Case {
                batch,
                cin,
                cout,
                hw,
                kernel,
                stride,
                pad,
            });
        }
    }
}

#[test]
fn gemm_convolution_matches_burn_on_a_large_batch_of_small_images() {
    // Many images per chunk (P = 4 output pixels), as in a ResNet's last stage.
    check(&Case {
        batch: 37,
        cin: 16,
        cout: 24,
        hw: [4, 4],
        kernel: 3,
        stride: 2,
        pad: 1,
    });
}

#[test]
fn winograd_weight_gradient_matches_burn_on_wide_layers() {
    // Wide enough for the weight gradient to run as Winograd too (`pays_for_weight`), with an
    // odd map (cropped edge tiles) and several chunks of tiles.
    for (batch, hw) in [(2, [16, 16]), (5, [9, 11])] {
        check(&Case {
            batch,
            cin: 128,
            cout: 16,
            hw,
            kernel: 3,
            stride: 1,
            pad: 1,
        });
    }
}

#[test]
fn geometry_rejects_kernels_larger_than_the_padded_input() {
    assert!(conv::ConvGeom::new([1, 3, 4, 4], [8, 3, 7, 7], [1, 1], [1, 1]).is_none());
    assert!(conv::ConvGeom::new([1, 3, 4, 4], [8, 2, 3, 3], [1, 1], [1, 1]).is_none());
    let g = conv::ConvGeom::new([2, 3, 32, 32], [8, 3, 3, 3], [2, 2], [1, 1]).expect("fits");
    assert_eq!(g.out_hw, [16, 16]);
    assert_eq!(g.macs(), 2 * 8 * 27 * 256);

    // An empty batch: empty outputs and a zero weight gradient, no panic.
    let empty = conv::ConvGeom::new([0, 3, 8, 8], [4, 3, 3, 3], [1, 1], [1, 1]).expect("fits");
    let w = vec![0.5f32; 4 * 27];
    assert!(conv::cpu::forward(&empty, &[], &w).is_empty());
    assert!(conv::cpu::grad_input(&empty, &[], &w).is_empty());
    assert_eq!(conv::cpu::grad_weight(&empty, &[], &[]), vec![0.0; 4 * 27]);
}

/// The choice in the `KernelChoice` is what runs: `CpuConv::Burn` gives Burn's convolution bit
/// for bit, the default gives this crate's kernels (equal to rounding, not to the bit).
#[test]
fn the_kernel_choice_selects_the_implementation() {
    use resnet_kernels::CpuConv;
    let device = Default::default();
    let layer: Conv2d<Flex> = Conv2dConfig::new([8, 16], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(&device);
    let x = Tensor::<Flex, 4>::from_data(
        TensorData::new(values(4 * 8 * 100, 3), [4, 8, 10, 10]),
        &device,
    );
    let bits = |t: Tensor<Flex, 4>| -> Vec<u32> {
        let v = t.into_data().to_vec::<f32>().expect("f32");
        v.iter().map(|f| f.to_bits()).collect()
    };
    let burn = bits(layer.forward(x.clone()));
    let choose = |c: CpuConv| KernelChoice {
        cpu_conv: c,
        ..KernelChoice::default()
    };
    assert_eq!(
        bits(conv::conv2d(&choose(CpuConv::Burn), &layer, x.clone())),
        burn
    );
    assert_ne!(bits(conv::conv2d(&choose(CpuConv::Gemm), &layer, x)), burn);
}

/// The evaluation max pool equals Burn's bit for bit: the ImageNet stem's 3x3/2 pad 1 on even
/// and odd sizes, a 2x2/2 unpadded pool, a 3x3/1 pad 1 one, and a 1-pixel plane.
#[test]
fn evaluation_max_pool_equals_burns() {
    use burn::nn::pool::MaxPool2dConfig;
    use resnet_kernels::pool::max_pool2d;
    let device = Default::default();
    for (kernel, stride, pad, hw) in [
        (3, 2, 1, [16, 16]),
        (3, 2, 1, [9, 7]),
        (2, 2, 0, [8, 6]),
        (3, 1, 1, [5, 5]),
        (3, 2, 1, [1, 1]),
    ] {
        let pool = MaxPool2dConfig::new([kernel; 2])
            .with_strides([stride; 2])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .init();
        let shape = [3, 5, hw[0], hw[1]];
        let x = Tensor::<Flex, 4>::from_data(
            TensorData::new(values(shape.iter().product(), 17), shape),
            &device,
        );
        let bits = |t: Tensor<Flex, 4>| -> Vec<u32> {
            let v = t.into_data().to_vec::<f32>().expect("f32");
            v.iter().map(|x| x.to_bits()).collect()
        };
        let ours = max_pool2d(&KernelChoice::default(), &pool, x.clone());
        assert_eq!(
            ours.dims(),
            pool.forward(x.clone()).dims(),
            "k{kernel} s{stride} p{pad} {hw:?}"
        );
        assert_eq!(
            bits(ours),
            bits(pool.forward(x)),
            "k{kernel} s{stride} p{pad} {hw:?}"
        );
    }
}

/// The training max pool (an autodiff node of this crate's) equals Burn's op bit for bit:
/// values and the input gradient, on inputs full of ties (values rounded to a coarse grid, as
/// after a ReLU: the first of equal maxima must win) and with NaNs (Burn's rule: a NaN that
/// comes first in its window stays, a later one never wins), on the shapes above.
#[test]
fn training_max_pool_equals_burns_values_and_gradient() {
    use burn::nn::pool::MaxPool2dConfig;
    use resnet_kernels::pool::max_pool2d;
    use resnet_kernels::CpuConv;
    let device = Default::default();
    let burn_ops = KernelChoice {
        cpu_conv: CpuConv::Burn,
        ..KernelChoice::default()
    };
    let bits = |v: Vec<f32>| -> Vec<u32> { v.iter().map(|x| x.to_bits()).collect() };
    for (kernel, stride, pad, hw, batch) in [
        (3, 2, 1, [16, 16], 3),
        (3, 2, 1, [9, 7], 1),
        (2, 2, 0, [8, 6], 2),
        (3, 1, 1, [5, 5], 3),
        (3, 2, 1, [1, 1], 2),
    ] {
        let pool = MaxPool2dConfig::new([kernel; 2])
            .with_strides([stride; 2])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .init();
        let shape = [batch, 4, hw[0], hw[1]];
        let n: usize = shape.iter().product();
        let mut v: Vec<f32> = values(n, 23)
            .into_iter()
            .map(|x| (x * 3.0).round().max(0.0))
            .collect();
        for i in (0..n).step_by(13) {
            v[i] = f32::NAN;
        }
        let run = |k: &KernelChoice| {
            let x = Tensor::<B, 4>::from_data(TensorData::new(v.clone(), shape), &device)
                .require_grad();
            let y = max_pool2d(k, &pool, x.clone());
            let dims = y.dims();
            let weights = Tensor::<B, 4>::from_data(
                TensorData::new(values(dims.iter().product(), 5), dims),
                &device,
            );
            let grads = (y.clone() * weights).sum().backward();
            let dx = x.grad(&grads).expect("x has a gradient");
            (
                y.into_data().to_vec::<f32>().expect("f32"),
                dx.into_data().to_vec::<f32>().expect("f32"),
            )
        };
        let (y, dx) = run(&KernelChoice::default());
        let (y_burn, dx_burn) = run(&burn_ops);
        let case = format!("k{kernel} s{stride} p{pad} {hw:?} batch {batch}");
        assert_eq!(bits(y), bits(y_burn), "values, {case}");
        assert_eq!(bits(dx), bits(dx_burn), "input gradient, {case}");
    }
}
