//! Fine-tuning settings: pretrained weights to start from, stages to freeze, and the backbone's
//! own learning rate. The trainer applies them (`resnet_train`'s `finetune` module).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::SpecError;

/// Parts of the network that can be frozen, by torchvision name.
pub const FREEZABLE: [&str; 5] = ["stem", "layer1", "layer2", "layer3", "layer4"];

/// Fine-tuning settings; all off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneConfig {
    /// torchvision ResNet weights (`.pth`, `.pt` or `.safetensors`, any head size) to start from;
    /// the classifier is freshly initialised for the dataset's classes. Default: none.
    pub pretrained: Option<PathBuf>,
    /// Parts whose parameters and BatchNorm statistics stay fixed: any of `stem` (conv1 + bn1),
    /// `layer1` .. `layer4`. The classifier always trains. Default: none.
    pub freeze: Vec<String>,
    /// Backbone LR = scheduled LR x this (the head gets the scheduled LR). Default 1.
    pub backbone_lr_scale: f64,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            pretrained: None,
            freeze: Vec::new(),
            backbone_lr_scale: 1.0,
        }
    }
}

impl FinetuneConfig {
    /// Checks names and ranges; errors name the field.
    pub fn validate(&self) -> Result<(), SpecError> {
        for f in &self.freeze {
            if !FREEZABLE.contains(&f.as_str()) {
                return Err(SpecError::Config(format!(
                    "finetune.freeze: unknown part '{f}', expected any of {}",
                    FREEZABLE.join(", ")
                )));
            }
        }
        let s = self.backbone_lr_scale;
        if !(s >= 0.0) || !s.is_finite() {
            return Err(SpecError::Config(
                "finetune.backbone_lr_scale must be >= 0".into(),
            ));
        }
        Ok(())
    }

    /// True when the optimizer must run separately for the head.
    pub fn splits_head(&self) -> bool {
        self.backbone_lr_scale != 1.0
    }

    /// Whether `part` (one of [`FREEZABLE`]) is frozen.
    pub fn freezes(&self, part: &str) -> bool {
        self.freeze.iter().any(|f| f == part)
    }
}
