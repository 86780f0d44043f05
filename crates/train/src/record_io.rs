//! Model and optimizer records as files, with the operating system's cause of a failed write
//! kept. Burn's file recorders stream into the file through the MessagePack serializer, which
//! turns every I/O error into `Unknown("invalid value write: …")`: a full disk read as a format
//! problem. Here a record is encoded in memory into exactly the bytes
//! `NamedMpkFileRecorder<FullPrecisionSettings>` writes (same metadata, same named MessagePack;
//! a test compares them), then written with std's I/O, whose error says "No space left on
//! device". The bytes are in memory once more for the duration of the write (a ResNet-152 record
//! is ~240 MB).

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::record::{BurnRecord, FullPrecisionSettings, NamedMpkFileRecorder, Record};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

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

/// The shape of every tensor in a record file's bytes, in the order they were written (module
/// order: the order [`ModuleVisitor`] visits the parameters in).
pub fn tensor_shapes(bytes: &[u8]) -> Result<Vec<Vec<usize>>, String> {
    let mut out = Vec::new();
    let mut de = rmp_serde::Deserializer::new(bytes);
    Shapes(&mut out)
        .deserialize(&mut de)
        .map_err(|e| format!("not a model record: {e}"))?;
    Ok(out)
}

/// The shapes a model's parameters have, in module order, without initialising them.
pub fn model_shapes<B: Backend, M: Module<B>>(model: &M) -> Vec<Vec<usize>> {
    struct Visit(Vec<Vec<usize>>);
    impl<B: Backend> ModuleVisitor<B> for Visit {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(param.lazy_shape().dims::<D>().to_vec());
        }
    }
    let mut v = Visit(Vec::new());
    model.visit(&mut v);
    v.0
}

/// Checks that the record in `bytes` fits `model` tensor by tensor, so a mismatch (a
/// `state.json` that disagrees with its weights) is an error naming the first difference
/// instead of a panic inside Burn's loader.
pub fn check_fits<B: Backend, M: Module<B>>(bytes: &[u8], model: &M) -> Result<(), String> {
    let file = tensor_shapes(bytes)?;
    let want = model_shapes::<B, M>(model);
    if let Some(i) = (0..file.len().max(want.len())).find(|&i| file.get(i) != want.get(i)) {
        let show =
            |s: Option<&Vec<usize>>| s.map_or_else(|| "nothing".into(), |s| format!("{s:?}"));
        return Err(format!(
            "the file holds {} tensors and the model {}; tensor #{i} is {} in the file, {} in the model",
            file.len(),
            want.len(),
            show(file.get(i)),
            show(want.get(i))
        ));
    }
    Ok(())
}

/// Collects the value of every `shape` key, depth first, skipping everything else.
struct Shapes<'a>(&'a mut Vec<Vec<usize>>);

impl<'de> DeserializeSeed<'de> for Shapes<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Shapes<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a MessagePack record")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
        let out = self.0;
        while let Some(key) = m.next_key::<String>()? {
            if key == "shape" {
                out.push(m.next_value::<Vec<usize>>()?);
            } else {
                m.next_value_seed(Shapes(&mut *out))?;
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
        let out = self.0;
        while s.next_element_seed(Shapes(&mut *out))?.is_some() {}
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint_bytes_bound;
    use burn::backend::Flex;
    use burn::module::Module;
    use resnet_model::{BuildResNet, ResNetConfig};

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

    #[test]
    fn a_record_of_another_depth_is_named_not_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = Default::default();
        let cfg = |depth| ResNetConfig {
            depth,
            width: 4,
            ..ResNetConfig::default()
        };
        let small = cfg(18).init::<B>(&device).expect("model");
        write::<B, _>(&dir.path().join("m"), small.clone().into_record(), "model").expect("write");
        let bytes = std::fs::read(dir.path().join("m.mpk")).expect("read");
        let shapes = tensor_shapes(&bytes).expect("shapes");
        assert_eq!(
            shapes,
            model_shapes::<B, _>(&small),
            "file order is module order"
        );
        assert!(shapes.len() > 60, "{}", shapes.len());
        check_fits::<B, _>(&bytes, &small).expect("its own model fits");
        let bigger = cfg(34).init::<B>(&device).expect("model");
        let e = check_fits::<B, _>(&bytes, &bigger).expect_err("depth 34 does not fit");
        assert!(e.contains("tensor #"), "{e}");
        let wider = ResNetConfig {
            width: 8,
            ..cfg(18)
        }
        .init::<B>(&device)
        .expect("model");
        let e = check_fits::<B, _>(&bytes, &wider).expect_err("width 8 does not fit");
        assert!(
            e.contains("tensor #0 is [4, 3, 3, 3] in the file, [8, 3, 3, 3]"),
            "{e}"
        );
        // Truncated: an error, not a panic; well-formed but no tensors: does not fit.
        assert!(tensor_shapes(&bytes[..bytes.len() / 2]).is_err());
        let e = check_fits::<B, _>(b"\x93abc", &small).expect_err("no tensors");
        assert!(e.contains("the file holds 0 tensors"), "{e}");
    }

    #[test]
    fn the_checkpoint_bound_covers_a_real_checkpoint_and_grows_with_the_model() {
        let mut cfg = crate::TrainConfig::default();
        cfg.model.width = 4;
        let small = checkpoint_bytes_bound(&cfg).expect("bound");
        let device = Default::default();
        let model = cfg.model.init::<B>(&device).expect("model");
        let _ = crate::param_hash(&model);
        let bytes = encode::<B, _>(model.into_record()).expect("encode").len() as u64;
        assert!(small > 2 * bytes, "{small} vs model {bytes}");
        cfg.model.width = 64;
        cfg.model.depth = 50;
        let r50 = checkpoint_bytes_bound(&cfg).expect("bound");
        // ResNet-50: 25.6M parameters, SGD momentum: ~205 MB of tensors, twice that + 64 MiB.
        assert!((400 << 20..600 << 20).contains(&r50), "{r50}");
        cfg.optim.kind = crate::OptimizerKind::Adamw;
        assert!(checkpoint_bytes_bound(&cfg).expect("bound") > r50);
    }

    #[test]
    fn the_counted_tensor_elements_are_those_of_the_burn_models_record() {
        // The bound above counts from the configuration (the coordinator links no Burn); the
        // count must be the record's, for every depth, both stems and a width that is not 64.
        for depth in [18, 34, 50, 101, 152] {
            for stem in [resnet_model::Stem::Cifar, resnet_model::Stem::Imagenet] {
                let cfg = resnet_model::ResNetConfig {
                    stem,
                    width: 8,
                    ..resnet_model::ResNetConfig::new(depth, 7)
                };
                let model = cfg.init::<B>(&Default::default()).expect("model");
                let record: u64 = model_shapes::<B, _>(&model)
                    .iter()
                    .map(|s| s.iter().product::<usize>() as u64)
                    .sum();
                let counted = cfg.tensor_elements().expect("count");
                assert_eq!(counted, record, "ResNet-{depth} {stem}");
            }
        }
    }
}
