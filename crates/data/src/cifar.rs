//! CIFAR-10 and CIFAR-100 in the official binary format.
//!
//! CIFAR-10: `data_batch_{1..5}.bin`, `test_batch.bin`; records of 1 label byte + 3072 pixel bytes.
//! CIFAR-100: `train.bin`, `test.bin`; records of 1 coarse + 1 fine label byte + 3072 pixel bytes.
//! `dir` may hold the files or the `cifar-10-batches-bin`/`cifar-100-binary` folder the official
//! tarball extracts to.

use std::path::{Path, PathBuf};

use crate::{DataError, ImageDataset};

const PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR and which split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    /// 10 classes.
    Cifar10,
    /// 100 fine classes (the coarse label is read and validated, then dropped).
    Cifar100,
}

impl CifarKind {
    /// The folder the official tarball extracts to.
    pub fn folder(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "cifar-10-batches-bin",
            CifarKind::Cifar100 => "cifar-100-binary",
        }
    }

    fn files(self, train: bool) -> Vec<&'static str> {
        match (self, train) {
            (CifarKind::Cifar10, true) => vec![
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            (CifarKind::Cifar10, false) => vec!["test_batch.bin"],
            (CifarKind::Cifar100, true) => vec!["train.bin"],
            (CifarKind::Cifar100, false) => vec!["test.bin"],
        }
    }

    fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            CifarKind::Cifar100 => 2,
        }
    }

    fn classes(self) -> Vec<String> {
        match self {
            CifarKind::Cifar10 => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
            CifarKind::Cifar100 => (0..100).map(|i| format!("class_{i:02}")).collect(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "cifar10",
            CifarKind::Cifar100 => "cifar100",
        }
    }
}

/// CIFAR-10's class names, index = label.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The directory that actually holds the `.bin` files: `dir` itself or `dir/<tarball folder>`.
pub fn resolve_dir(kind: CifarKind, dir: &Path) -> Option<PathBuf> {
    let probe = kind.files(false)[0];
    [dir.to_path_buf(), dir.join(kind.folder())]
        .into_iter()
        .find(|d| d.join(probe).is_file())
}

/// Loads one split. `limit` keeps the first N records (reading stops there).
pub fn load_cifar(
    kind: CifarKind,
    dir: &Path,
    train: bool,
    limit: Option<usize>,
) -> Result<ImageDataset, DataError> {
    let root = resolve_dir(kind, dir).ok_or_else(|| DataError::Missing {
        message: format!(
            "{} not found in {} (looked for {} there and in {}/). Run with --download to fetch \
             the official binary tarball into that directory, or point --data at a directory \
             holding the .bin files.",
            kind.name(),
            dir.display(),
            kind.files(false)[0],
            kind.folder()
        ),
    })?;
    let classes = kind.classes();
    let mut ds = ImageDataset {
        name: format!("{}/{}", kind.name(), if train { "train" } else { "test" }),
        pixels: Vec::new(),
        labels: Vec::new(),
        height: 32,
        width: 32,
        classes,
    };
    for file in kind.files(train) {
        if limit.is_some_and(|l| ds.len() >= l) {
            break;
        }
        let path = root.join(file);
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        parse_records(kind, &path, &bytes, &mut ds)?;
    }
    if let Some(l) = limit {
        ds.truncate(l);
    }
    Ok(ds)
}

/// Parses one `.bin` file's bytes, appending to `ds`. Validates the size and every label.
pub fn parse_records(
    kind: CifarKind,
    path: &Path,
    bytes: &[u8],
    ds: &mut ImageDataset,
) -> Result<(), DataError> {
    let lb = kind.label_bytes();
    let record = lb + PIXELS;
    if bytes.is_empty() {
        return Err(DataError::format(path, "file is empty"));
    }
    if !bytes.len().is_multiple_of(record) {
        let whole = bytes.len() / record;
        return Err(DataError::format(
            path,
            format!(
                "size {} is not a multiple of the {record}-byte record: record {whole} at \
                 offset {} is truncated ({} of {record} bytes)",
                bytes.len(),
                whole * record,
                bytes.len() - whole * record
            ),
        ));
    }
    let n_classes = ds.classes.len();
    ds.pixels.reserve(bytes.len() / record * PIXELS);
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        let label = rec[lb - 1] as usize;
        if kind == CifarKind::Cifar100 && rec[0] >= 20 {
            return Err(DataError::format(
                path,
                format!(
                    "record {i} (offset {}) has coarse label {}, expected 0..19",
                    i * record,
                    rec[0]
                ),
            ));
        }
        if label >= n_classes {
            return Err(DataError::format(
                path,
                format!(
                    "record {i} (offset {}) has label {label}, expected 0..{}",
                    i * record + lb - 1,
                    n_classes - 1
                ),
            ));
        }
        ds.labels.push(label as u16);
        ds.pixels.extend_from_slice(&rec[lb..]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty(kind: CifarKind) -> ImageDataset {
        ImageDataset {
            name: "t".into(),
            pixels: vec![],
            labels: vec![],
            height: 32,
            width: 32,
            classes: kind.classes(),
        }
    }

    fn record(label: u8, fill: u8) -> Vec<u8> {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(fill, PIXELS));
        r
    }

    #[test]
    fn parses_valid_records() {
        let mut bytes = record(3, 7);
        bytes.extend(record(9, 200));
        let mut ds = empty(CifarKind::Cifar10);
        parse_records(CifarKind::Cifar10, Path::new("x.bin"), &bytes, &mut ds).expect("valid");
        assert_eq!(ds.labels, vec![3, 9]);
        assert_eq!(ds.image(1)[0], 200);
        assert_eq!(ds.image(0)[PIXELS - 1], 7);
    }

    #[test]
    fn bad_label_names_file_record_and_range() {
        let mut bytes = record(1, 0);
        bytes.extend(record(17, 0));
        let mut ds = empty(CifarKind::Cifar10);
        let e = parse_records(
            CifarKind::Cifar10,
            Path::new("data_batch_3.bin"),
            &bytes,
            &mut ds,
        )
        .expect_err("label 17 must be rejected")
        .to_string();
        assert!(e.contains("data_batch_3.bin"), "{e}");
        assert!(e.contains("record 1"), "{e}");
        assert!(e.contains("label 17, expected 0..9"), "{e}");
    }

    #[test]
    fn truncated_file_is_reported_with_offset() {
        let mut bytes = record(1, 0);
        bytes.extend(&record(2, 0)[..100]);
        let mut ds = empty(CifarKind::Cifar10);
        let e = parse_records(CifarKind::Cifar10, Path::new("t.bin"), &bytes, &mut ds)
            .expect_err("truncated")
            .to_string();
        assert!(
            e.contains("record 1 at offset 3073 is truncated (100 of 3073"),
            "{e}"
        );
    }

    #[test]
    fn cifar100_checks_both_labels() {
        let mut ok = vec![19u8, 99];
        ok.extend(std::iter::repeat_n(0u8, PIXELS));
        let mut ds = empty(CifarKind::Cifar100);
        parse_records(CifarKind::Cifar100, Path::new("train.bin"), &ok, &mut ds).expect("valid");
        assert_eq!(ds.labels, vec![99]);
        let mut bad = vec![20u8, 5];
        bad.extend(std::iter::repeat_n(0u8, PIXELS));
        let e = parse_records(CifarKind::Cifar100, Path::new("train.bin"), &bad, &mut ds)
            .expect_err("coarse 20")
            .to_string();
        assert!(e.contains("coarse label 20, expected 0..19"), "{e}");
    }

    #[test]
    fn missing_directory_says_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = load_cifar(CifarKind::Cifar10, dir.path(), true, None)
            .expect_err("missing")
            .to_string();
        assert!(e.contains("--download"), "{e}");
        assert!(e.contains("test_batch.bin"), "{e}");
    }

    #[test]
    fn resolves_tarball_subfolder_and_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&sub).expect("mkdir");
        let mut bytes = Vec::new();
        for i in 0..5u8 {
            bytes.extend(record(i, i));
        }
        for f in CifarKind::Cifar10
            .files(true)
            .into_iter()
            .chain(["test_batch.bin"])
        {
            std::fs::write(sub.join(f), &bytes).expect("write");
        }
        let ds = load_cifar(CifarKind::Cifar10, dir.path(), true, Some(7)).expect("load");
        assert_eq!(ds.len(), 7);
        assert_eq!(ds.labels, vec![0, 1, 2, 3, 4, 0, 1]);
        let test = load_cifar(CifarKind::Cifar10, dir.path(), false, None).expect("load");
        assert_eq!(test.len(), 5);
    }
}
