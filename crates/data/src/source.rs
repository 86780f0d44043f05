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
        }
    }
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
    /// Loads both splits. `progress` receives download progress when `download` is set.
    pub fn load(
        &self,
        seed: u64,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<Splits, DataError> {
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
                let train = load_folder(&self.dir, true, self.image_size, self.train_limit)?;
                let test = load_folder(&self.dir, false, self.image_size, self.test_limit)?;
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
