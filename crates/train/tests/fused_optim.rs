//! The fused CPU optimizer update (`KernelChoice::cpu_optim = fused`, the default) against
//! Burn's optimizers (`burn`): the same parameters bit for bit after several steps, for every
//! optimizer and option the run config offers, with a parameter subset per step (fine-tuning's
//! two learning rates), and across a checkpoint written by one and resumed by the other.

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use resnet_kernels::{CpuOptim, KernelChoice};
use resnet_model::{BuildResNet, ResNet, ResNetConfig};
use resnet_train::{
    smoothed_targets, soft_cross_entropy, take_head_grads, targets_tensor, AnyOptimizer,
    BuildOptimizer, OptimConfig, OptimizerKind,
};

type B = Autodiff<Flex>;

/// The trainable parameters' exact values, in visit order. (BatchNorm running statistics are
/// left out: Burn shares them between clones of a module, so they are not a run's own.)
fn param_hash<M: Module<B>>(m: &M) -> u64 {
    struct Bytes(Vec<u8>);
    impl ModuleVisitor<B> for Bytes {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let t = p.val();
            if t.is_require_grad() {
                self.0.extend_from_slice(t.into_data().as_bytes());
            }
        }
    }
    let mut v = Bytes(Vec::new());
    m.visit(&mut v);
    assert!(!v.0.is_empty(), "the model has trainable parameters");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&v.0, &mut h);
    std::hash::Hasher::finish(&h)
}

fn kernels(optim: CpuOptim) -> KernelChoice {
    KernelChoice {
        cpu_optim: optim,
        ..KernelChoice::default()
    }
}

/// A width-8 ResNet-18 (its layer4 weights span several of the update's parallel chunks)
/// with every parameter materialised (clones then share the values).
fn model() -> ResNet<B> {
    let cfg = ResNetConfig {
        width: 8,
        num_classes: 5,
        ..ResNetConfig::default()
    };
    let m = cfg.init::<B>(&Default::default()).expect("model");
    let _ = resnet_train::param_hash(&m);
    m
}

/// Step `i`'s gradients on a batch that depends on `i` alone (not on Burn's process-wide RNG,
/// which the tests running in parallel would share).
fn grads(model: &ResNet<B>, i: usize) -> GradientsParams {
    let device = Default::default();
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
    let pixels: Vec<f32> = (0..4 * 3 * 16 * 16)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let x = Tensor::<B, 4>::from_data(TensorData::new(pixels, [4, 3, 16, 16]), &device);
    let labels: Vec<u16> = (0..4).map(|k| ((k + i) % 5) as u16).collect();
    let t = targets_tensor::<B>(smoothed_targets(&labels, 5, 0.0), 4, 5, &device);
    let loss = soft_cross_entropy(model.forward(x), t);
    GradientsParams::from_grads(loss.backward(), model)
}

/// `steps` steps with a changing learning rate; `split` steps the head separately at 3x the
/// backbone's rate (fine-tuning). Returns the model and the optimizer.
fn train(
    cfg: &OptimConfig,
    impl_: CpuOptim,
    start: ResNet<B>,
    optim: Option<AnyOptimizer<B>>,
    steps: std::ops::Range<usize>,
    split: bool,
) -> (ResNet<B>, AnyOptimizer<B>) {
    let mut model = start.with_kernels(kernels(impl_));
    let mut optim = optim.unwrap_or_else(|| cfg.init::<B>());
    for i in steps {
        let lr = 0.05 / (1.0 + i as f64);
        let mut g = grads(&model, i);
        model = if split {
            let head = take_head_grads(&model, &mut g);
            let m = optim.step(lr, model, g);
            optim.step(3.0 * lr, m, head)
        } else {
            optim.step(lr, model, g)
        };
        assert_eq!(
            optim.is_fused(),
            impl_ == CpuOptim::Fused,
            "the model's kernel choice picks the implementation"
        );
    }
    (model, optim)
}

fn configs() -> Vec<(&'static str, OptimConfig)> {
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
                weight_decay: 0.0,
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
            "adam",
            OptimConfig {
                kind: OptimizerKind::Adam,
                weight_decay: 0.0,
                beta1: 0.8,
                eps: 1e-6,
                ..base.clone()
            },
        ),
        (
            "adamw",
            OptimConfig {
                kind: OptimizerKind::Adamw,
                weight_decay: 0.05,
                ..base.clone()
            },
        ),
        (
            "adamw without decay",
            OptimConfig {
                kind: OptimizerKind::Adamw,
                weight_decay: 0.0,
                ..base
            },
        ),
    ]
}

#[test]
fn fused_updates_equal_burns_bit_for_bit() {
    let start = model();
    let before = param_hash(&start);
    for (name, cfg) in configs() {
        for split in [false, true] {
            let (ours, _) = train(&cfg, CpuOptim::Fused, start.clone(), None, 0..4, split);
            let (burn, _) = train(&cfg, CpuOptim::Burn, start.clone(), None, 0..4, split);
            let h = param_hash(&ours);
            assert_ne!(h, before, "{name}: the parameters moved");
            assert_eq!(
                h,
                param_hash(&burn),
                "{name} (split {split}): fused != Burn's"
            );
        }
    }
    assert_eq!(
        param_hash(&start),
        before,
        "the start model was not written in place"
    );
}

#[test]
fn a_checkpoint_written_by_either_resumes_on_the_other_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let start = model();
    for (name, cfg) in configs() {
        let (straight, _) = train(&cfg, CpuOptim::Burn, start.clone(), None, 0..4, false);
        for (first, second) in [
            (CpuOptim::Fused, CpuOptim::Burn),
            (CpuOptim::Burn, CpuOptim::Fused),
            (CpuOptim::Fused, CpuOptim::Fused),
        ] {
            let (half, optim) = train(&cfg, first, start.clone(), None, 0..2, false);
            let path = dir.path().join("optim");
            optim.save(&path).expect("save");
            let loaded = cfg
                .init::<B>()
                .load(&path, &Default::default())
                .expect("load");
            let (resumed, _) = train(&cfg, second, half, Some(loaded), 2..4, false);
            assert_eq!(
                param_hash(&resumed),
                param_hash(&straight),
                "{name}: {first:?} for 2 steps, saved, then {second:?} for 2"
            );
        }
        // Switching implementation mid-run without a file converts the state in memory.
        let (half, optim) = train(&cfg, CpuOptim::Fused, start.clone(), None, 0..2, false);
        let (switched, _) = train(&cfg, CpuOptim::Burn, half, Some(optim), 2..4, false);
        assert_eq!(
            param_hash(&switched),
            param_hash(&straight),
            "{name}: switched"
        );
    }
}

#[test]
fn a_parameter_without_a_gradient_keeps_its_value_and_state() {
    // The head alone for two steps, then everything: the backbone's first update must start
    // its state then (Burn's first-step rule), exactly as Burn does.
    let start = model();
    for (name, cfg) in configs() {
        let run = |impl_: CpuOptim| {
            let mut model = start.clone().with_kernels(kernels(impl_));
            let mut optim = cfg.init::<B>();
            for i in 0..2 {
                let mut g = grads(&model, i);
                let head = take_head_grads(&model, &mut g);
                model = optim.step(0.01, model, head);
            }
            let mid = model.clone();
            let g = grads(&model, 2);
            (mid, optim.step(0.01, model, g))
        };
        let (mid, ours) = run(CpuOptim::Fused);
        let (_, burn) = run(CpuOptim::Burn);
        assert_eq!(
            param_hash(&mid.layer1),
            param_hash(&start.layer1),
            "{name}: no gradient, no change"
        );
        assert_eq!(param_hash(&ours), param_hash(&burn), "{name}");
    }
}

#[test]
fn the_model_passed_in_is_not_changed_under_a_snapshot() {
    // Rollback keeps a clone of the model; updating in place must not write through it.
    let cfg = OptimConfig::default();
    let start = model().with_kernels(kernels(CpuOptim::Fused));
    let snapshot = start.clone();
    let before = param_hash(&snapshot);
    let mut optim = cfg.init::<B>();
    let g = grads(&start, 0);
    let after = optim.step(0.1, start, g);
    assert_eq!(param_hash(&snapshot), before);
    assert_ne!(param_hash(&after), before);
    // And the snapshot's module is still usable on its own.
    assert_eq!(snapshot.num_params(), after.num_params());
}
