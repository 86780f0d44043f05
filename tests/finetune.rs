//! Fine-tuning from torchvision-layout weights: the backbone loads exactly, the head is replaced
//! for the dataset's classes, frozen parts (parameters and BatchNorm statistics) never change,
//! and the backbone learning-rate scale applies to the backbone only.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use resnet_data::DataConfig;
use resnet_model::{
    export_torchvision_safetensors, import_torchvision, BuildResNet, ResNet, ResNetConfig,
};
use resnet_train::{OptimizerKind, Quiet, TrainConfig, Trainer};

type B = Autodiff<Flex>;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// Every float parameter of a module, in order.
fn flat<M: Module<Flex>>(m: &M) -> Vec<f32> {
    struct V(Vec<f32>);
    impl ModuleVisitor<Flex> for V {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Flex, D>>) {
            self.0.extend(p.val().into_data().iter::<f32>());
        }
    }
    let mut v = V(Vec::new());
    m.visit(&mut v);
    v.0
}

/// Parameters and BatchNorm running statistics of the parts named by torchvision.
fn part(m: &ResNet<Flex>, name: &str) -> Vec<f32> {
    let mut out = Vec::new();
    let bns: Vec<&resnet_model::BatchNorm2d<Flex>> = match name {
        "stem" => {
            out.extend(flat(&m.conv1));
            out.extend(flat(&m.bn1));
            vec![&m.bn1]
        }
        "fc" => return flat(&m.fc),
        _ => {
            let i: usize = name[5..].parse().expect("layerN");
            let stage = m.stages()[i - 1];
            for b in stage {
                out.extend(flat(b));
            }
            stage.iter().flat_map(|b| b.batchnorms()).collect()
        }
    };
    for bn in bns {
        let (mean, var) = bn.running_stats();
        out.extend(mean.into_data().iter::<f32>());
        out.extend(var.into_data().iter::<f32>());
    }
    out
}

fn cfg(file: &Path, freeze: &[&str], backbone_lr_scale: f64) -> TrainConfig {
    let mut c = TrainConfig {
        batch_size: 16,
        epochs: 1,
        max_steps: Some(3),
        seed: 3,
        eval_each_epoch: false,
        loader_workers: 1,
        ..Default::default()
    };
    c.model = ResNetConfig {
        width: 8,
        ..ResNetConfig::new(18, 10)
    };
    c.optim.lr = 0.05;
    c.optim.kind = OptimizerKind::Adamw;
    c.data = DataConfig {
        train_limit: Some(64),
        test_limit: Some(8),
        ..Default::default()
    };
    c.finetune.pretrained = Some(file.to_path_buf());
    c.finetune.freeze = freeze.iter().map(|s| s.to_string()).collect();
    c.finetune.backbone_lr_scale = backbone_lr_scale;
    c
}

fn reference(file: &Path, classes: usize) -> ResNet<Flex> {
    let mut m = ResNetConfig {
        width: 8,
        ..ResNetConfig::new(18, classes)
    }
    .init::<Flex>(&Default::default())
    .expect("model");
    import_torchvision(&mut m, file, false).expect("fixture loads");
    m
}

fn trainer(c: TrainConfig) -> Trainer<B> {
    let splits = c.data.load(c.seed, &mut |_, _| {}).expect("data");
    Trainer::<B>::new(c, splits, Default::default(), None).expect("trainer")
}

const PARTS: [&str; 5] = ["stem", "layer1", "layer2", "layer3", "layer4"];

#[test]
fn frozen_parts_stay_exactly_as_loaded_and_the_rest_trains() {
    // The parity fixture is a torchvision-layout ResNet-18 (width 8) with random weights and
    // BatchNorm statistics, written by tests/fixtures/make_parity.py.
    let file = fixture("parity_resnet18_cifar_w8.pth");
    let want = reference(&file, 10);
    let mut t = trainer(cfg(&file, &["stem", "layer1"], 1.0));
    let before = t.model().valid();
    for p in PARTS {
        assert_eq!(part(&before, p), part(&want, p), "{p} loads exactly");
    }
    assert_ne!(
        part(&before, "fc"),
        part(&want, "fc"),
        "the head starts fresh"
    );
    t.fit(&mut Quiet).expect("fit");
    let after = t.model().valid();
    for p in ["stem", "layer1"] {
        assert_eq!(part(&after, p), part(&want, p), "frozen {p} changed");
    }
    for p in ["layer2", "layer3", "layer4", "fc"] {
        assert_ne!(part(&after, p), part(&before, p), "{p} did not train");
    }
}

#[test]
fn imagenet_head_is_replaced_and_backbone_lr_scale_zero_keeps_the_backbone() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A 1000-class torchvision-layout file, as ImageNet weights come.
    let file = dir.path().join("imagenet_head.safetensors");
    let src = ResNetConfig {
        width: 8,
        ..ResNetConfig::new(18, 1000)
    }
    .init::<Flex>(&Default::default())
    .expect("model");
    export_torchvision_safetensors(&src, &file).expect("export");
    let mut t = trainer(cfg(&file, &[], 0.0));
    let before = t.model().valid();
    assert_eq!(before.fc.weight.val().dims(), [64, 10]);
    t.fit(&mut Quiet).expect("fit");
    let after = t.model().valid();
    assert_eq!(flat(&after.conv1), flat(&src.conv1));
    for (a, b) in after.stages().iter().zip(src.stages()) {
        for (x, y) in a.iter().zip(b.iter()) {
            // Trainable tensors only: running statistics are not parameters and follow the data.
            let trainable = |m: &resnet_model::Block<Flex>| {
                let mut v = flat(&m.conv1);
                v.extend(flat(&m.conv2));
                v.extend(m.bn1.weight.val().into_data().iter::<f32>());
                v.extend(m.bn2.bias.val().into_data().iter::<f32>());
                v
            };
            assert_eq!(
                trainable(x),
                trainable(y),
                "backbone moved with backbone_lr_scale 0"
            );
        }
    }
    assert_ne!(flat(&after.fc), flat(&before.fc), "the head trains");
}

fn rejection(c: TrainConfig) -> String {
    let splits = c.data.load(c.seed, &mut |_, _| {}).expect("data");
    Trainer::<B>::new(c, splits, Default::default(), None)
        .err()
        .expect("rejected")
        .to_string()
}

#[test]
fn unknown_freeze_part_and_wrong_architecture_are_clear_errors() {
    let file = fixture("parity_resnet18_cifar_w8.pth");
    let err = rejection(cfg(&file, &["layer5"], 1.0));
    assert!(
        err.contains("finetune.freeze") && err.contains("layer5"),
        "{err}"
    );
    let mut c = cfg(&file, &[], 1.0);
    c.model.depth = 34;
    let err = rejection(c);
    assert!(
        err.contains("finetune.pretrained") && err.contains(".pth"),
        "{err}"
    );
}
