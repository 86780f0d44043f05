//! ResNet 18/34/50/101/152 for Burn, laid out exactly as torchvision's `resnet*` so that
//! state dicts import and export with a small remap and parameter counts match.
//!
//! ```text
//! input [N,3,H,W] -> stem (cifar: 3x3/1 | imagenet: 7x7/2 + maxpool 3x3/2)
//!                 -> layer1 (stride 1) -> layer2..4 (stride 2) -> global avg pool -> dropout -> fc
//! ```
//!
//! The model knows nothing about devices, data or parallelism: callers pick the backend, and
//! the kernels that run its convolutions, BatchNorms and classifier come from the
//! `resnet-kernels` crate, chosen by the [`KernelChoice`] the caller hands to
//! [`ResNet::with_kernels`].
#![forbid(unsafe_code)]

mod batchnorm;
mod block;
mod resnet;
mod shapes;
mod weights;

pub use batchnorm::BatchNorm2d;
pub use block::{Block, Downsample};
pub use resnet::{BuildResNet, ResNet};
pub use resnet_kernels::KernelChoice;
pub use resnet_spec::{BlockKind, ResNetConfig, Stem};
pub use shapes::{stage_shapes, StageShape};
pub use weights::{
    export_torchvision_safetensors, import_backbone, import_torchvision, ImportReport,
};

/// Errors of model construction and weight import/export.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An invalid configuration value; the message names the field and the expected range.
    #[error("invalid model config: {0}")]
    Config(String),
    /// A weights file that could not be read, written or matched to the model.
    #[error("{path}: {message}")]
    Weights {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

impl From<resnet_spec::SpecError> for ModelError {
    /// The configuration's own checks (`ResNetConfig::validate`) keep their message.
    fn from(e: resnet_spec::SpecError) -> Self {
        match e {
            resnet_spec::SpecError::Model(m) => ModelError::Config(m),
            other => ModelError::Config(other.to_string()),
        }
    }
}
