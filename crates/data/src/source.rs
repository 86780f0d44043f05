//! One place that turns a data configuration into train and test splits.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cifar::{load_cifar, CifarKind};
use crate::download::{download_and_extract, DownloadSpec};
use crate::folder::load_folder;
use crate::synthetic::synthetic;
use crate::{AugmentConfig, DataError, ImageDataset, Normalization};

/// Which dataset to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// CIFAR-10 binary files.
    Cifar10,
    /// CIFAR-100 binary files (fine labels).
    Cifar100,
    /// `root/<class>/*.png|jpg`.
    Folder,
    /// Generated shapes; needs no files.
    #[default]
    Synthetic,
}

impl std::str::FromStr for DatasetKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cifar10" | "cifar-10" => Ok(Self::Cifar10),
            "cifar100" | "cifar-100" => Ok(Self::Cifar100),
            "folder" => Ok(Self::Folder),
            "synthetic" => Ok(Self::Synthetic),
            o => Err(DataError::Config(format!(
                "unknown dataset '{o}', expected cifar10, cifar100, folder or synthetic"
            ))),
        }
    }
}

/// Data configuration; every field has a documented default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Dataset. Default `synthetic`.
    pub dataset: DatasetKind,
    /// Directory holding the files (CIFAR, folder). Default `data`.
    pub dir: PathBuf,
    /// Use only the first N training records. Default: all.
    pub train_limit: Option<usize>,
    /// Use only the first N test records. Default: all.
    pub test_limit: Option<usize>,
    /// Synthetic training images (before `train_limit`). Default 5000.
    pub synthetic_train: usize,
    /// Synthetic test images. Default 1000.
    pub synthetic_test: usize,
    /// Side length images are generated at (synthetic) or resized to (folder). Default 32.
    pub image_size: usize,
    /// Normalisation; default: the dataset's own statistics.
    pub normalization: Option<Normalization>,
    /// Training augmentation. Default: pad-4 random crop + horizontal flip.
    pub augment: AugmentConfig,
    /// Fetch CIFAR if it is missing. Default false.
    pub download: bool,
    /// Image folders: the class names in label order. `resnet train` records the training
    /// split's list here (and the normalisation above) when a run starts, so evaluating the
    /// model on another folder labels it by name. Default: the folder's own training classes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetKind::Synthetic,
            dir: PathBuf::from("data"),
            train_limit: None,
            test_limit: None,
            synthetic_train: 5000,
            synthetic_test: 1000,
            image_size: 32,
            normalization: None,
            augment: AugmentConfig::default(),
            download: false,
            classes: None,
        }
    }
}

/// The largest accepted `image_size`: a batch of 256 images of 1024x1024 is already 3 GiB of
/// f32 activations at the input alone.
pub const MAX_IMAGE_SIZE: usize = 1024;

/// Total memory of this machine in bytes (`/proc/meminfo`), when it can be read.
fn memory_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Loaded train and test data with the normalisation to apply.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Training split.
    pub train: ImageDataset,
    /// Test split.
    pub test: ImageDataset,
    /// Normalisation for both.
    pub norm: Normalization,
}

impl DataConfig {
    /// Checks the sizes before anything is allocated; errors name the field. `memory` is the
    /// machine's memory in bytes, if known (generated data must fit in it).
    pub fn validate_with(&self, memory: Option<u64>) -> Result<(), DataError> {
        let s = self.image_size;
        if !(1..=MAX_IMAGE_SIZE).contains(&s) {
            return Err(DataError::Config(format!(
                "data.image_size = {s}: must be between 1 and {MAX_IMAGE_SIZE} pixels"
            )));
        }
        if self.dataset == DatasetKind::Synthetic {
            let n = |limit: Option<usize>, count: usize| limit.map_or(count, |l| l.min(count));
            let images = n(self.train_limit, self.synthetic_train) as u64
                + n(self.test_limit, self.synthetic_test) as u64;
            let bytes = images.saturating_mul(3 * (s * s) as u64);
            if let Some(total) = memory.filter(|t| bytes > *t) {
                return Err(DataError::Config(format!(
                    "data.synthetic_train/synthetic_test: {images} generated images of {s}x{s} need \
                     {:.1} GiB, more than this machine's {:.1} GiB",
                    gib(bytes),
                    gib(total)
                )));
            }
        }
        Ok(())
    }

    /// Records what an image folder's training data determines and a model trained on it
    /// depends on: its class list and (unless given) its channel statistics, so evaluation on
    /// another folder labels by name and normalises as training did. Other datasets: nothing.
    pub fn record_trained_on(&mut self, splits: &Splits) {
        if self.dataset == DatasetKind::Folder {
            self.classes
                .get_or_insert_with(|| splits.train.classes.clone());
            self.normalization.get_or_insert(splits.norm);
        }
    }

    /// [`DataConfig::validate_with`] this machine's memory.
    pub fn validate(&self) -> Result<(), DataError> {
        self.validate_with(memory_total())
    }

    /// Loads both splits. `progress` receives download progress when `download` is set.
    pub fn load(
        &self,
        seed: u64,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<Splits, DataError> {
        self.validate()?;
        let (train, test, default_norm) = match self.dataset {
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => {
                let (kind, norm) = if self.dataset == DatasetKind::Cifar10 {
                    (CifarKind::Cifar10, Normalization::CIFAR10)
                } else {
                    (CifarKind::Cifar100, Normalization::CIFAR100)
                };
                if self.download && crate::cifar::resolve_dir(kind, &self.dir).is_none() {
                    download_and_extract(&DownloadSpec::cifar(kind), &self.dir, progress)?;
                }
                (
                    load_cifar(kind, &self.dir, true, self.train_limit)?,
                    load_cifar(kind, &self.dir, false, self.test_limit)?,
                    norm,
                )
            }
            DatasetKind::Folder => {
                let classes = self.classes.as_deref();
                let train =
                    load_folder(&self.dir, true, self.image_size, self.train_limit, classes)?;
                let test =
                    load_folder(&self.dir, false, self.image_size, self.test_limit, classes)?;
                let norm = train.channel_stats();
                (train, test, norm)
            }
            DatasetKind::Synthetic => {
                let n_train = self
                    .train_limit
                    .map_or(self.synthetic_train, |l| l.min(self.synthetic_train));
                let n_test = self
                    .test_limit
                    .map_or(self.synthetic_test, |l| l.min(self.synthetic_test));
                (
                    synthetic(n_train, self.image_size, seed, true),
                    synthetic(n_test, self.image_size, seed, false),
                    Normalization::HALF,
                )
            }
        };
        if train.is_empty() {
            return Err(DataError::Config(format!(
                "{}: the training split is empty",
                train.name
            )));
        }
        Ok(Splits {
            train,
            test,
            norm: self.normalization.unwrap_or(default_norm),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked_before_anything_is_allocated() {
        let at = |image_size| DataConfig {
            image_size,
            ..DataConfig::default()
        };
        let e = at(0).validate_with(None).expect_err("zero");
        assert_eq!(
            e.to_string(),
            "invalid data config: data.image_size = 0: must be between 1 and 1024 pixels"
        );
        // The reported failure: 100000 aborted trying to allocate 1.9 TB. Now it is an error,
        // and loading says the same before generating anything.
        assert!(at(100_000).validate_with(None).is_err());
        let e = at(100_000)
            .load(1, &mut |_, _| {})
            .expect_err("refused before allocation");
        assert!(e.to_string().contains("data.image_size = 100000"), "{e}");
        assert!(at(1024).validate_with(None).is_ok());
        // 6000 images of 1024x1024 are 17.6 GiB: too much for an 8 GiB machine.
        let e = at(1024).validate_with(Some(8 << 30)).expect_err("too big");
        assert!(
            e.to_string()
                .contains("6000 generated images of 1024x1024 need 17.6 GiB"),
            "{e}"
        );
        // Limits count: 10 images fit anywhere.
        let small = DataConfig {
            train_limit: Some(5),
            test_limit: Some(5),
            ..at(1024)
        };
        assert!(small.validate_with(Some(8 << 30)).is_ok());
    }
}
