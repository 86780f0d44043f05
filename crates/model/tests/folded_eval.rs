//! Evaluation with every BatchNorm folded into the convolution before it (the CPU default)
//! against the same model evaluated unfolded and against Burn's own kernels: equal to float
//! rounding, for both block kinds and both stems, with BatchNorm statistics far from the
//! identity so that a wrong fold (scale, shift, residual or ReLU misplaced) shows.

use burn::backend::Flex;
use burn::module::Param;
use burn::tensor::{Distribution, Tensor};
use resnet_kernels::{CpuBn, CpuConv, KernelChoice};
use resnet_model::{BuildResNet, ResNet, ResNetConfig, Stem};

type B = Flex;

fn uniform(n: usize, lo: f64, hi: f64) -> Tensor<B, 1> {
    Tensor::random([n], Distribution::Uniform(lo, hi), &Default::default())
}

/// A model whose BatchNorms have random gamma, beta and running statistics.
fn model(depth: usize, stem: Stem, width: usize) -> ResNet<B> {
    let mut m = ResNetConfig {
        depth,
        stem,
        width,
        ..ResNetConfig::default()
    }
    .init::<B>(&Default::default())
    .expect("model");
    for bn in m.batchnorms_mut() {
        let c = bn.channels();
        bn.weight = Param::from_tensor(uniform(c, 0.5, 1.5));
        bn.bias = Param::from_tensor(uniform(c, -0.3, 0.3));
        bn.set_running_stats(uniform(c, -0.4, 0.4), uniform(c, 0.3, 2.0));
    }
    // Burn initialises parameters lazily, and each clone of a not yet initialised parameter
    // draws its own values: one forward pass fixes them before the comparisons clone the model.
    let _ = m.forward(Tensor::zeros([1, 3, 32, 32], &Default::default()));
    m
}

fn logits(m: &ResNet<B>, k: KernelChoice, x: &Tensor<B, 4>) -> Vec<f32> {
    m.clone()
        .with_kernels(k)
        .forward(x.clone())
        .into_data()
        .to_vec::<f32>()
        .expect("f32")
}

fn check(depth: usize, stem: Stem, width: usize, size: usize) {
    let m = model(depth, stem, width);
    let x = Tensor::<B, 4>::random(
        [3, 3, size, size],
        Distribution::Normal(0.0, 1.0),
        &Default::default(),
    );
    let folded = logits(&m, KernelChoice::default(), &x);
    let unfolded = logits(
        &m,
        KernelChoice {
            cpu_bn: CpuBn::Unfolded,
            ..KernelChoice::default()
        },
        &x,
    );
    let burn = logits(
        &m,
        KernelChoice {
            cpu_conv: CpuConv::Burn,
            cpu_bn: CpuBn::Burn,
            ..KernelChoice::default()
        },
        &x,
    );
    let name = format!("resnet{depth} {stem:?} width {width} {size}x{size}");
    let scale = unfolded.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (what, other) in [("unfolded", &unfolded), ("burn", &burn)] {
        let err = folded
            .iter()
            .zip(other.iter())
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= 1e-4 * scale,
            "{name}: folded vs {what}: max error {err} (scale {scale})"
        );
    }
    // The fold really ran: it rounds differently from the unfolded pass somewhere.
    assert_ne!(
        folded, unfolded,
        "{name}: folded logits are the unfolded ones bit for bit"
    );
}

#[test]
fn folded_evaluation_equals_the_unfolded_model_to_rounding() {
    check(18, Stem::Cifar, 8, 16);
    check(18, Stem::Imagenet, 8, 32);
    check(50, Stem::Imagenet, 4, 32);
}
