//! The layer list and compute split behind `resnet scaling`.

use clap::Parser;

use super::*;

fn args(extra: &[&str]) -> ScalingArgs {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: ScalingArgs,
    }
    let argv = std::iter::once("scaling").chain(extra.iter().copied());
    Cli::try_parse_from(argv).expect("valid flags").a
}

fn layers(depth: usize, stem: &str) -> Layers {
    let a = args(&["--depth", &depth.to_string(), "--stem", stem]);
    Layers::of(&a.shape.config(10).expect("config"), 32).expect("layers")
}

#[test]
fn the_layer_list_holds_every_parameter_torchvision_counts() {
    // torchvision's resnet18 (11,689,512 with 1000 classes) with a 10-class head:
    // 11,689,512 - 513,000 + 5,130 = 11,181,642; the CIFAR stem's 3x3 conv instead of the 7x7
    // one: - 9,408 + 1,728.
    let r18 = layers(18, "imagenet");
    assert_eq!(r18.params, 11_181_642);
    assert_eq!(layers(18, "cifar").params, 11_173_962);
    // resnet50: 25,557,032 - 2,049,000 + 20,490 = 23,528,522 (ImageNet stem).
    let r50 = layers(50, "imagenet");
    assert_eq!(r50.params, 23_528_522);
    assert_eq!(
        r50.convs.len(),
        53,
        "49 in the blocks and stem + 4 downsample"
    );

    for l in [&r18, &r50] {
        let shares = l.backward_shares_by_macs();
        assert_eq!(shares.len(), l.convs.len() + 1, "every conv and the head");
        let bytes: f64 = shares.iter().map(|s| s.0).sum();
        assert_eq!(bytes, l.bytes());
        assert_eq!(l.bytes(), 4.0 * l.params as f64);
        // Backward order: the head first, the stem (one pass only: no input gradient) last.
        let stem = &l.convs[0];
        assert_eq!(shares.last().map(|s| s.1), Some(stem.macs() as f64));
        assert_eq!(shares[0].0, 4.0 * (l.head[0] * 10 + 10) as f64);
    }
}

#[test]
fn ready_times_rise_to_the_end_of_the_backward() {
    let g = Layers::grads(&[(4.0, 1.0), (8.0, 0.0), (12.0, 3.0)], 2.0);
    let ready: Vec<f64> = g.iter().map(|g| g.ready_s).collect();
    assert_eq!(ready, vec![0.5, 0.5, 2.0]);
    assert_eq!(g.iter().map(|g| g.bytes).sum::<f64>(), 24.0);
}

#[test]
fn a_measured_step_splits_one_to_two_by_multiply_adds() {
    let a = args(&["--step-ms", "30"]);
    let l = layers(18, "cifar");
    let (c, grads) = compute(&a, &l).expect("compute");
    assert!((c.step_s() - 0.030).abs() < 1e-12);
    // Twice the forward's multiply-adds, less the stem's input gradient (tiny): just under 2/3.
    let share = c.backward_s / c.step_s();
    assert!(share > 0.66 && share < 2.0 / 3.0, "{share}");
    let last = grads.last().map(|g| g.ready_s).unwrap_or_default();
    assert!((last - c.backward_s).abs() < 1e-12);

    let err = compute(&args(&[]), &l).err().map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("--step-ms")));
    let err = compute(&args(&["--step-ms=-1"]), &l)
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("positive")));
}

#[test]
fn bad_links_are_named() {
    let a = args(&[]);
    let e = topology(&a, 8, "fast").err().map(|e| e.to_string());
    assert!(e.is_some_and(|e| e.contains("--network \"fast\"")));
    let a = args(&["--wire-efficiency", "1.5"]);
    let e = topology(&a, 8, "1gbit").err().map(|e| e.to_string());
    assert!(e.is_some_and(|e| e.contains("--wire-efficiency")));
    // One NIC per GPU unless told.
    let t = topology(&args(&["--gpus-per-node", "4"]), 4, "25gbit").expect("topology");
    assert_eq!((t.nics, t.inter.bytes_per_s), (4, 25e9 / 8.0));
}

#[test]
fn a_profile_spreads_its_measured_backward_over_the_layers() {
    use crate::cmd_profile::{LayerProfile, PassTimes, Profile};
    let l = layers(18, "cifar");
    let a = args(&["--batch-size", "4"]);
    // Every distinct shape at batch 4: input gradient 1, weight gradient 2, BN+ReLU backward 1.
    let mut shapes: Vec<String> = vec![];
    for g in &l.convs {
        let label = crate::cmd_profile::shape_label(&ConvGeom { batch: 4, ..*g });
        if !shapes.contains(&label) {
            shapes.push(label);
        }
    }
    let passes = PassTimes {
        forward: 9.0,
        grad_input: 1.0,
        grad_weight: 2.0,
    };
    let profile = Profile {
        case: "test".into(),
        threads: 1,
        layers: shapes
            .into_iter()
            .map(|shape| LayerProfile {
                shape,
                count: 1,
                macs: 1,
                burn: PassTimes::default(),
                gemm: passes,
                bn_relu: [0.0, 1.0],
            })
            .collect(),
        step: [0.1, 0.4, 0.05],
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("profile.json");
    std::fs::write(&path, serde_json::to_string(&profile).expect("json")).expect("write");
    let (c, grads) = from_profile(&path, &a, &l).expect("profile");
    assert_eq!((c.forward_s, c.backward_s, c.optimizer_s), (0.1, 0.4, 0.05));
    // The head is ready at once; every conv but the stem weighs 4, the stem 3 (no input
    // gradient): the measured 0.4 s split in those proportions.
    let total = 4.0 * (l.convs.len() - 1) as f64 + 3.0;
    assert_eq!(grads[0].ready_s, 0.0);
    assert!((grads[1].ready_s - 0.4 * 4.0 / total).abs() < 1e-12);
    let n = grads.len();
    assert!((grads[n - 1].ready_s - grads[n - 2].ready_s - 0.4 * 3.0 / total).abs() < 1e-12);
    assert!((grads[n - 1].ready_s - 0.4).abs() < 1e-12);

    // Another batch's profile is refused with the command that makes the right one.
    let other = args(&["--batch-size", "8"]);
    let e = from_profile(&path, &other, &l).err().map(|e| e.to_string());
    assert!(e.is_some_and(|e| e.contains("--batch-size 8 --json")));
}
