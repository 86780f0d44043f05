//! Property tests: the CIFAR parser returns a result (never panics) on arbitrary bytes, accepts
//! exactly the well-formed files, and its errors always name the file.

use std::path::Path;

use proptest::prelude::*;
use resnet_data::{parse_records, CifarKind, ImageDataset};

fn empty(k: usize) -> ImageDataset {
    ImageDataset {
        name: "fuzz".into(),
        pixels: vec![],
        labels: vec![],
        height: 32,
        width: 32,
        classes: (0..k).map(|i| i.to_string()).collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..10_000), hundred in any::<bool>()) {
        let (kind, k, record) = if hundred { (CifarKind::Cifar100, 100, 3074) } else { (CifarKind::Cifar10, 10, 3073) };
        let mut ds = empty(k);
        match parse_records(kind, Path::new("fuzz.bin"), &bytes, &mut ds) {
            Ok(()) => {
                prop_assert!(!bytes.is_empty() && bytes.len() % record == 0);
                prop_assert_eq!(ds.len(), bytes.len() / record);
                prop_assert!(ds.labels.iter().all(|&l| (l as usize) < k));
            }
            Err(e) => prop_assert!(e.to_string().starts_with("fuzz.bin: "), "{}", e),
        }
    }

    #[test]
    fn valid_records_always_parse(labels in proptest::collection::vec(0u8..10, 1..6), fill in any::<u8>()) {
        let bytes: Vec<u8> = labels.iter().flat_map(|&l| std::iter::once(l).chain(std::iter::repeat_n(fill, 3072))).collect();
        let mut ds = empty(10);
        prop_assert!(parse_records(CifarKind::Cifar10, Path::new("ok.bin"), &bytes, &mut ds).is_ok());
        prop_assert_eq!(ds.labels, labels.iter().map(|&l| l as u16).collect::<Vec<_>>());
    }
}
