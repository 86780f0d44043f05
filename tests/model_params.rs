//! Parameter counts must equal torchvision's for every depth (1000 classes, ImageNet stem), and
//! the CIFAR stem changes exactly conv1.

use burn::backend::Flex;
use resnet_model::{BuildResNet, ResNetConfig, Stem};

#[test]
fn trainable_params_match_torchvision() {
    // torchvision: sum(p.numel() for p in resnetN().parameters())
    let expected = [
        (18, 11_689_512),
        (34, 21_797_672),
        (50, 25_557_032),
        (101, 44_549_160),
        (152, 60_192_808),
    ];
    for (depth, want) in expected {
        let cfg = ResNetConfig {
            depth,
            num_classes: 1000,
            stem: Stem::Imagenet,
            ..Default::default()
        };
        let model = cfg.init::<Flex>(&Default::default()).expect("model");
        assert_eq!(model.trainable_params(), want, "resnet{depth}");
        // Running mean + var are counted separately, 2 per BatchNorm channel.
        assert_eq!(model.running_stat_count() % 2, 0);
    }
}

#[test]
fn cifar_stem_differs_only_in_conv1() {
    let mk = |stem| {
        ResNetConfig {
            depth: 18,
            num_classes: 10,
            stem,
            ..Default::default()
        }
        .init::<Flex>(&Default::default())
        .expect("model")
    };
    let (cifar, imagenet) = (mk(Stem::Cifar), mk(Stem::Imagenet));
    // 7x7 vs 3x3 kernels, 3 -> 64 channels.
    assert_eq!(
        imagenet.trainable_params() - cifar.trainable_params(),
        64 * 3 * (49 - 9)
    );
    assert!(cifar.maxpool.is_none() && imagenet.maxpool.is_some());
}

#[test]
fn invalid_configs_name_the_field() {
    let e = ResNetConfig {
        depth: 20,
        ..Default::default()
    }
    .validate()
    .expect_err("depth")
    .to_string();
    assert!(
        e.contains("depth 20") && e.contains("18, 34, 50, 101, 152"),
        "{e}"
    );
    let e = ResNetConfig {
        dropout: 1.5,
        ..Default::default()
    }
    .validate()
    .expect_err("dropout")
    .to_string();
    assert!(e.contains("dropout"), "{e}");
}
