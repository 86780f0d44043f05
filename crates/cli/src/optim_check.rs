//! The optimizer part of `resnet conv-check`: the fused update (`--cuda-optim fused` on a GPU,
//! the CPU's default fused update otherwise) against Burn's optimizer on the same device, for
//! each update rule the run config offers, over a whole ResNet's parameters.
//!
//! Both runs start from the same parameters and get the same synthetic gradients (registered
//! directly, no backward: the convolutions' own rounding, and cuDNN's run-to-run differences,
//! stay out of it). The error of a rule is `max |ours - theirs| / max |theirs|` over the
//! parameters' total change after [`STEPS`] steps: scale-free on the update itself, so a wrong
//! formula, a state buffer swapped between parameters or a missed stream order shows as an
//! error of order 1, while fused multiply-adds move it by a few ulps of the update.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use resnet_kernels::{CpuOptim, CudaOptim, KernelChoice};
use resnet_model::ResNet;
use resnet_train::{BuildOptimizer, OptimConfig, OptimizerKind};
use serde::Serialize;

use crate::cmd_conv_check::relative_error;

/// Updates per rule: the first step initialises the state, the later ones read it.
pub const STEPS: usize = 3;

/// One update rule's error.
#[derive(Debug, Serialize)]
pub struct OptimErrors {
    /// The rule, e.g. `sgd momentum + weight decay`.
    pub optimizer: String,
    /// `max |ours - reference| / max |reference|` over every parameter's total change.
    pub error: f64,
}

/// The error the fused update may show against Burn's: none on the CPU (the same operations in
/// the same order, bit for bit); on a GPU NVRTC contracts `a * b + c` into fused multiply-adds
/// where Burn's separate kernels round twice, a few ulps of each update (1e-4 leaves a wide
/// margin; a wrong update is off by order 1).
pub fn optim_tolerance(gpu: bool) -> f64 {
    if gpu {
        1e-4
    } else {
        0.0
    }
}

/// The rules checked: each optimizer with the options that change its arithmetic.
pub fn rules() -> Vec<(&'static str, OptimConfig)> {
    let base = OptimConfig::default();
    vec![
        ("sgd momentum + weight decay", base.clone()),
        (
            "sgd nesterov",
            OptimConfig {
                nesterov: true,
                ..base.clone()
            },
        ),
        (
            "sgd plain",
            OptimConfig {
                momentum: 0.0,
                ..base.clone()
            },
        ),
        (
            "adam + L2",
            OptimConfig {
                kind: OptimizerKind::Adam,
                lr: 1e-3,
                ..base.clone()
            },
        ),
        (
            "adamw",
            OptimConfig {
                kind: OptimizerKind::Adamw,
                lr: 1e-3,
                weight_decay: 0.05,
                ..base
            },
        ),
    ]
}

/// Every trainable parameter's values, in visit order, on the host.
fn trainable<B: AutodiffBackend>(m: &ResNet<B>) -> Vec<f32> {
    struct Values(Vec<f32>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Values {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let t = p.val();
            if t.is_require_grad() {
                let v = t.into_data().convert::<f32>().into_vec::<f32>();
                self.0.extend(v.unwrap_or_default());
            }
        }
    }
    let mut v = Values(Vec::new());
    m.visit(&mut v);
    v.0
}

/// Step `step`'s gradients: deterministic values in [-1, 1) for every trainable parameter.
fn gradients<B: AutodiffBackend>(
    m: &ResNet<B>,
    step: usize,
    device: &B::Device,
) -> GradientsParams {
    struct Register<'a, B: AutodiffBackend> {
        grads: GradientsParams,
        step: usize,
        index: u64,
        device: &'a B::Device,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Register<'_, B> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let t = p.val();
            if !t.is_require_grad() {
                return;
            }
            let shape = t.shape();
            let seed = 1000 * self.step as u64 + self.index;
            self.index += 1;
            let v = crate::cmd_conv_check::values(shape.num_elements(), seed);
            let g = Tensor::<B::InnerBackend, D>::from_data(TensorData::new(v, shape), self.device);
            self.grads.register(p.id, g);
        }
    }
    let mut r = Register::<B> {
        grads: GradientsParams::new(),
        step,
        index: 0,
        device,
    };
    m.visit(&mut r);
    r.grads
}

/// [`STEPS`] updates of `start` with `cfg` and the kernels `k`: the parameters' total change.
fn change<B: AutodiffBackend>(
    cfg: &OptimConfig,
    k: KernelChoice,
    start: &ResNet<B>,
    before: &[f32],
    device: &B::Device,
) -> Vec<f32> {
    let mut model = start.clone().with_kernels(k);
    let mut optim = cfg.init::<B>();
    for step in 0..STEPS {
        let g = gradients(&model, step, device);
        model = optim.step(cfg.lr / (1.0 + step as f64), model, g);
    }
    let after = trainable(&model);
    if after.len() != before.len() {
        return Vec::new();
    }
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

/// The fused update (as `k` chooses it) against Burn's optimizer, each rule on `model`'s
/// parameters (materialised: clones share them) on `device`.
pub fn check<B: AutodiffBackend>(
    k: &KernelChoice,
    model: &ResNet<B>,
    device: &B::Device,
) -> Vec<OptimErrors> {
    let before = trainable(model);
    let reference = KernelChoice {
        cpu_optim: CpuOptim::Burn,
        cuda_optim: CudaOptim::Burn,
        ..*k
    };
    rules()
        .into_iter()
        .map(|(name, cfg)| {
            let ours = change(&cfg, *k, model, &before, device);
            let theirs = change(&cfg, reference, model, &before, device);
            OptimErrors {
                optimizer: name.to_string(),
                error: relative_error(&ours, &theirs),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use resnet_model::{BuildResNet, ResNetConfig};

    type B = Autodiff<Flex>;

    fn model() -> ResNet<B> {
        let cfg = ResNetConfig {
            width: 4,
            num_classes: 3,
            ..ResNetConfig::default()
        };
        let m = cfg.init::<B>(&Default::default()).expect("model");
        let _ = resnet_train::param_hash(&m);
        m
    }

    #[test]
    fn the_cpus_fused_update_is_exact_and_a_wrong_update_would_show() {
        let m = model();
        let k = KernelChoice::default();
        assert_eq!(k.cpu_optim, CpuOptim::Fused);
        let errors = check(&k, &m, &Default::default());
        assert_eq!(errors.len(), rules().len());
        for e in &errors {
            assert_eq!(
                e.error, 0.0,
                "{}: the CPU's fused update is Burn's bits",
                e.optimizer
            );
        }
        // The measure is on the update: another learning rate's update is off by order 1.
        let before = trainable(&m);
        let cfg = OptimConfig::default();
        let ours = change(&cfg, k, &m, &before, &Default::default());
        let half = OptimConfig {
            lr: cfg.lr / 2.0,
            ..cfg.clone()
        };
        let other = change(&half, k, &m, &before, &Default::default());
        assert!(relative_error(&ours, &other) > 0.3);
        assert!(ours.iter().any(|d| *d != 0.0), "the parameters moved");
    }
}
