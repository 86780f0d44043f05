//! Property tests of weight import: a `.safetensors`, `.pth` or `.pt` file of arbitrary bytes
//! (and a genuine safetensors file with damaged bytes) is refused with an error; never a panic.

use burn::backend::Flex;
use proptest::prelude::*;
use resnet_model::{import_torchvision, BuildResNet, ResNetConfig};

type B = Flex;

fn try_import(ext: &str, bytes: &[u8]) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("weights.{ext}"));
    std::fs::write(&path, bytes).expect("write");
    let mut model = ResNetConfig {
        width: 4,
        ..ResNetConfig::default()
    }
    .init::<B>(&Default::default())
    .expect("model");
    import_torchvision(&mut model, &path, false).is_ok()
}

/// A small genuine safetensors file: one tensor under a torchvision key.
fn genuine() -> Vec<u8> {
    let data: Vec<u8> = (0..4 * 3 * 3 * 3 * 4).map(|i| i as u8).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4, 3, 3, 3], &data)
            .expect("view");
    safetensors::serialize([("conv1.weight", view)], None).expect("serialize")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    #[test]
    fn arbitrary_bytes_are_refused_without_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        ext in prop_oneof![Just("safetensors"), Just("pth"), Just("pt")],
    ) {
        prop_assert!(!try_import(ext, &bytes));
    }

    #[test]
    fn a_damaged_safetensors_file_is_refused_without_panic(
        flips in proptest::collection::vec((any::<usize>(), 1u8..), 1..4),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let mut bytes = genuine();
        for (i, x) in flips {
            let n = bytes.len();
            bytes[i % n] ^= x;
        }
        if let Some(c) = cut {
            let n = bytes.len();
            bytes.truncate(c % n);
        }
        // One tensor cannot fill a whole model: refused either way, but without a panic.
        prop_assert!(!try_import("safetensors", &bytes));
    }
}
