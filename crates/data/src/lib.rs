//! Data for resnet-cluster: CIFAR-10/100 binary files, image folders and a synthetic dataset,
//! decoded into one in-memory u8 format; seeded augmentation; `DistributedSampler`-style sharding;
//! a prefetching loader; and `--download` with MD5 verification.
//!
//! Nothing here knows about tensors or devices: a [`Batch`] is plain `f32`/`u16` vectors that the
//! training crate copies into whatever backend it runs on.

mod augment;
mod cifar;
mod dataset;
mod download;
mod error;
mod folder;
mod loader;
mod sampler;
mod source;
mod synthetic;

pub use augment::{augment_into, AugmentConfig, Draw};
pub use cifar::{load_cifar, parse_records, resolve_dir, CifarKind, CIFAR10_CLASSES};
pub use dataset::{ImageDataset, Normalization};
pub use download::{download_and_extract, DownloadSpec};
pub use error::DataError;
pub use folder::load_folder;
pub use loader::{build_batch, num_batches, Batch, Loader, LoaderConfig, Transform};
pub use sampler::ShardPlan;
pub use source::{DataConfig, DatasetKind, Splits};
pub use synthetic::{mix, synthetic, SYNTHETIC_CLASSES};
