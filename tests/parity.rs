//! Numerical parity with PyTorch/torchvision. Fixtures come from tests/fixtures/make_parity.py
//! (random weights and BatchNorm statistics in torchvision's layout, an input batch, and the
//! logits PyTorch computed). The model must import the state dict and reproduce the logits.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use resnet_model::{import_torchvision, BuildResNet, ResNet, ResNetConfig, Stem};

type B = Flex;
type AD = Autodiff<Flex>;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn read_tensor(file: &Path, key: &str) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let t = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    let data = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (data, t.shape().to_vec())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn cfg(depth: usize, stem: Stem) -> ResNetConfig {
    ResNetConfig {
        depth,
        num_classes: 10,
        stem,
        width: 8,
        ..Default::default()
    }
}

fn check_eval(case: &str, depth: usize, stem: Stem, weights_ext: &str) {
    let dev = Default::default();
    let mut model: ResNet<B> = cfg(depth, stem).init(&dev).expect("model");
    let report = import_torchvision(
        &mut model,
        &fixture(&format!("parity_{case}.{weights_ext}")),
        false,
    )
    .expect("import");
    assert!(report.applied > 0);
    let io = fixture(&format!("parity_{case}_io.safetensors"));
    let (x, shape) = read_tensor(&io, "input");
    let (want, _) = read_tensor(&io, "logits");
    let input = Tensor::<B, 4>::from_data(
        TensorData::new(x, [shape[0], shape[1], shape[2], shape[3]]),
        &dev,
    );
    let got: Vec<f32> = model.forward(input).into_data().to_vec().expect("f32");
    let diff = max_abs_diff(&got, &want);
    assert!(diff < 1e-4, "{case}: max |logit diff| = {diff}");
}

#[test]
fn resnet18_cifar_stem_matches_pytorch_eval_logits() {
    check_eval("resnet18_cifar_w8", 18, Stem::Cifar, "safetensors");
}

#[test]
fn resnet18_imports_pth_too() {
    check_eval("resnet18_cifar_w8", 18, Stem::Cifar, "pth");
}

#[test]
fn resnet50_imagenet_stem_matches_pytorch_eval_logits() {
    check_eval("resnet50_imagenet_w8", 50, Stem::Imagenet, "safetensors");
}

/// One training-mode forward: batch statistics for normalisation, and PyTorch's running-stat
/// update (momentum 0.1, **unbiased** variance) — where Burn's own BatchNorm differs.
#[test]
fn train_mode_batchnorm_matches_pytorch() {
    let dev = Default::default();
    let mut model: ResNet<AD> = cfg(18, Stem::Cifar).init(&dev).expect("model");
    import_torchvision(
        &mut model,
        &fixture("parity_resnet18_cifar_w8.safetensors"),
        false,
    )
    .expect("import");
    let io = fixture("parity_resnet18_cifar_w8_io.safetensors");
    let (x, s) = read_tensor(&io, "input");
    let input = Tensor::<AD, 4>::from_data(TensorData::new(x, [s[0], s[1], s[2], s[3]]), &dev);
    let got: Vec<f32> = model.forward(input).into_data().to_vec().expect("f32");
    let (want, _) = read_tensor(&io, "train_logits");
    let diff = max_abs_diff(&got, &want);
    assert!(diff < 1e-3, "train-mode logits differ by {diff}");
    for (key, state) in [
        ("bn1_running_mean", &model.bn1.running_mean),
        ("bn1_running_var", &model.bn1.running_var),
    ] {
        let (want, _) = read_tensor(&io, key);
        let got: Vec<f32> = state.value_sync().into_data().to_vec().expect("f32");
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-5, "{key} differs by {diff}");
    }
}

#[test]
fn export_then_import_roundtrips_exactly() {
    let dev = Default::default();
    let mut a: ResNet<B> = cfg(50, Stem::Imagenet).init(&dev).expect("model");
    import_torchvision(
        &mut a,
        &fixture("parity_resnet50_imagenet_w8.safetensors"),
        false,
    )
    .expect("import");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("export.safetensors");
    resnet_model::export_torchvision_safetensors(&a, &out).expect("export");
    // Exported keys are torchvision's.
    let bytes = std::fs::read(&out).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    let names: Vec<String> = st.names().into_iter().map(String::from).collect();
    assert!(
        names.contains(&"layer1.0.downsample.0.weight".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"layer4.2.bn3.running_var".to_string()));
    assert_eq!(st.tensor("fc.weight").expect("fc").shape(), &[10, 256]);
    let mut b: ResNet<B> = cfg(50, Stem::Imagenet).init(&dev).expect("model");
    import_torchvision(&mut b, &out, false).expect("re-import");
    assert_eq!(resnet_train::param_hash(&a), resnet_train::param_hash(&b));
}

#[test]
fn mismatched_weights_are_rejected_with_the_file_named() {
    let dev = Default::default();
    let mut model: ResNet<B> = cfg(34, Stem::Cifar).init(&dev).expect("model");
    let path = fixture("parity_resnet18_cifar_w8.safetensors");
    let e = import_torchvision(&mut model, &path, false)
        .expect_err("resnet18 weights into resnet34")
        .to_string();
    assert!(e.contains("parity_resnet18_cifar_w8.safetensors"), "{e}");
    assert!(e.contains("missing"), "{e}");
}
