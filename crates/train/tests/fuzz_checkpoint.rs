//! Property tests: reading a damaged checkpoint (arbitrary manifest text, arbitrary file bytes,
//! truncation) is an error naming a path, never a panic, and never accepted.

use proptest::prelude::*;
use resnet_train::{resolve_checkpoint, verify};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn arbitrary_manifest_is_rejected_without_panic(text in ".{0,400}") {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("MANIFEST.json"), &text).expect("write");
        // Anything but a well-formed manifest of this format version is an error with the path.
        if let Err(e) = verify(dir.path()) {
            prop_assert!(e.to_string().contains("MANIFEST.json") || e.to_string().contains(dir.path().to_str().expect("utf8")), "{}", e);
        }
    }

    #[test]
    fn damaged_payload_is_detected(payload in proptest::collection::vec(any::<u8>(), 1..2000), flip in any::<usize>(), cut in any::<bool>()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("checkpoints");
        // Write a valid checkpoint through the public resume path: a manifest that matches.
        let ckpt = root.join("step-00000001");
        std::fs::create_dir_all(&ckpt).expect("mkdir");
        std::fs::write(ckpt.join("model.mpk"), &payload).expect("write");
        let digest: String = {
            use sha2::Digest;
            sha2::Sha256::digest(&payload).iter().map(|b| format!("{b:02x}")).collect()
        };
        let manifest = serde_json::json!({"format_version": 1, "step": 1, "epoch": 0,
            "files": [{"name": "model.mpk", "bytes": payload.len(), "sha256": digest}]});
        std::fs::write(ckpt.join("MANIFEST.json"), manifest.to_string()).expect("write");
        prop_assert!(verify(&ckpt).is_ok());
        let mut damaged = payload.clone();
        if cut {
            damaged.truncate(flip % payload.len());
        } else {
            let i = flip % damaged.len();
            damaged[i] ^= 0x5a;
        }
        std::fs::write(ckpt.join("model.mpk"), &damaged).expect("write");
        let e = verify(&ckpt).expect_err("damage must be detected").to_string();
        prop_assert!(e.contains("model.mpk") && e.contains("checksum mismatch"), "{}", e);
        prop_assert!(resolve_checkpoint(dir.path()).is_err());
    }
}
