//! Property tests of image decoding in image folders: a `.png`/`.jpg` file of arbitrary bytes,
//! or a genuine image damaged (bytes flipped, truncated, its dimensions set huge), is decoded or
//! refused with an error naming the file; never a panic, never an allocation the image's own
//! header talks the decoder into.

use std::io::Cursor;

use proptest::prelude::*;
use resnet_data::load_folder;

fn genuine(ext: &str) -> Vec<u8> {
    let img = image::RgbImage::from_fn(12, 9, |x, y| image::Rgb([x as u8 * 20, y as u8 * 25, 7]));
    let mut out = Cursor::new(Vec::new());
    let format = if ext == "png" {
        image::ImageFormat::Png
    } else {
        image::ImageFormat::Jpeg
    };
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

/// Loads a folder with one good image in class `a` and `bytes` as the only image of class `b`.
fn load_with(ext: &str, bytes: &[u8]) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    for c in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join(c)).expect("mkdir");
    }
    std::fs::write(dir.path().join("a/good.png"), genuine("png")).expect("write");
    std::fs::write(dir.path().join(format!("b/fuzzed.{ext}")), bytes).expect("write");
    match load_folder(dir.path(), true, 8, None, None) {
        Ok(d) => {
            assert_eq!(d.labels.len(), 2);
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn arbitrary_bytes_as_an_image_are_refused_naming_the_file(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ext in prop_oneof![Just("png"), Just("jpg")],
    ) {
        if let Err(e) = load_with(ext, &bytes) {
            prop_assert!(e.contains("fuzzed."), "{}", e);
        }
    }

    #[test]
    fn a_damaged_image_is_decoded_or_refused_without_panic(
        ext in prop_oneof![Just("png"), Just("jpg")],
        flips in proptest::collection::vec((any::<usize>(), 1u8..), 0..4),
        cut in proptest::option::of(any::<usize>()),
        huge in any::<bool>(),
    ) {
        let mut bytes = genuine(ext);
        if huge && ext == "png" {
            // IHDR width and height (bytes 16..24) to 2^30 each: the decoder must refuse, not
            // try to allocate exabytes.
            bytes[16..20].copy_from_slice(&(1u32 << 30).to_be_bytes());
            bytes[20..24].copy_from_slice(&(1u32 << 30).to_be_bytes());
        }
        for (i, x) in flips {
            let n = bytes.len();
            bytes[i % n] ^= x;
        }
        if let Some(c) = cut {
            let n = bytes.len();
            bytes.truncate(c % n);
        }
        if let Err(e) = load_with(ext, &bytes) {
            prop_assert!(e.contains("fuzzed."), "{}", e);
        }
    }
}
