//! Model and optimizer records as files, with the operating system's cause of a failed write
//! kept. Burn's file recorders stream into the file through the MessagePack serializer, which
//! turns every I/O error into `Unknown("invalid value write: …")`: a full disk read as a format
//! problem. Here a record is encoded in memory into exactly the bytes
//! `NamedMpkFileRecorder<FullPrecisionSettings>` writes (same metadata, same named MessagePack;
//! a test compares them), then written with std's I/O, whose error says "No space left on
//! device". The bytes are in memory once more for the duration of the write (a ResNet-152 record
//! is ~240 MB).

use std::path::{Path, PathBuf};

use burn::record::{BurnRecord, FullPrecisionSettings, NamedMpkFileRecorder, Record};
use burn::tensor::backend::Backend;

use crate::TrainError;

/// The recorder whose file format this module reproduces (and whose loader reads it back).
pub type FileRecorder = NamedMpkFileRecorder<FullPrecisionSettings>;

/// The bytes [`FileRecorder`] would write for `record`.
pub fn encode<B: Backend, R: Record<B>>(record: R) -> Result<Vec<u8>, TrainError> {
    let item = record.into_item::<FullPrecisionSettings>();
    let item = BurnRecord::<_, B>::new::<FileRecorder>(item);
    rmp_serde::encode::to_vec_named(&item)
        .map_err(|e| TrainError::Checkpoint(format!("cannot encode a record: {e}")))
}

/// Writes `record` to `stem` + `.mpk` (the name [`FileRecorder`] gives `stem`); `what` names it
/// in the error ("model", "optimizer state").
pub fn write<B: Backend, R: Record<B>>(
    stem: &Path,
    record: R,
    what: &str,
) -> Result<(), TrainError> {
    let bytes = encode::<B, R>(record)?;
    let path = mpk_path(stem);
    std::fs::write(&path, bytes).map_err(|e| {
        TrainError::Checkpoint(format!("{}: cannot write {what}: {e}", path.display()))
    })
}

/// `stem` with the `.mpk` extension, as [`FileRecorder`] names its files.
pub fn mpk_path(stem: &Path) -> PathBuf {
    stem.with_extension("mpk")
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::module::Module;
    use resnet_model::ResNetConfig;

    type B = Flex;

    #[test]
    fn writes_the_bytes_burns_file_recorder_writes_and_it_reads_them_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = Default::default();
        let cfg = ResNetConfig {
            width: 4,
            ..ResNetConfig::default()
        };
        let model = cfg.init::<B>(&device).expect("model");
        // Parameters initialise lazily (as the trainer does, read them all first).
        let _ = crate::param_hash(&model);
        model
            .clone()
            .save_file(dir.path().join("burn"), &FileRecorder::new())
            .expect("burn writes");
        write::<B, _>(
            &dir.path().join("ours"),
            model.clone().into_record(),
            "model",
        )
        .expect("we write");
        let burn = std::fs::read(dir.path().join("burn.mpk")).expect("burn's file");
        let ours = std::fs::read(dir.path().join("ours.mpk")).expect("our file");
        assert!(burn.len() > 1000);
        let first_diff = burn.iter().zip(&ours).position(|(a, b)| a != b);
        assert!(
            burn.len() == ours.len() && first_diff.is_none(),
            "not the bytes NamedMpkFileRecorder writes: {} vs {} bytes, first difference at {first_diff:?}",
            burn.len(),
            ours.len()
        );
        let back = cfg
            .init::<B>(&device)
            .expect("model")
            .load_file(dir.path().join("ours"), &FileRecorder::new(), &device)
            .expect("Burn's loader reads our file");
        assert_eq!(crate::param_hash(&back), crate::param_hash(&model));
    }

    #[test]
    fn a_failed_write_names_the_file_and_keeps_the_os_cause() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = Default::default();
        let model = ResNetConfig {
            width: 4,
            ..ResNetConfig::default()
        }
        .init::<B>(&device)
        .expect("model");
        let missing = dir.path().join("no-such-dir").join("model");
        let e = write::<B, _>(&missing, model.into_record(), "model")
            .expect_err("the directory does not exist");
        let text = e.to_string();
        assert!(text.contains("no-such-dir/model.mpk"), "{text}");
        assert!(text.contains("cannot write model"), "{text}");
        assert!(text.contains("No such file or directory"), "{text}");
    }
}
