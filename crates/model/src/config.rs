//! The model's configuration: depth, stem, width and the torchvision-compatible defaults.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// How the network looks at its input before the four residual stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// 3x3 conv, stride 1, no max-pool: keeps 32x32 CIFAR images at full resolution in layer1.
    #[default]
    Cifar,
    /// torchvision's ImageNet stem: 7x7 conv stride 2, then 3x3 max-pool stride 2. On 32x32 inputs
    /// layer1 sees 8x8 maps (what the original tutorial used).
    Imagenet,
}

impl std::str::FromStr for Stem {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cifar" => Ok(Stem::Cifar),
            "imagenet" => Ok(Stem::Imagenet),
            other => Err(ModelError::Config(format!(
                "unknown stem '{other}', expected 'cifar' or 'imagenet'"
            ))),
        }
    }
}

impl std::fmt::Display for Stem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stem::Cifar => "cifar",
            Stem::Imagenet => "imagenet",
        })
    }
}

/// Which residual block a depth uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3x3 convs, expansion 1 (ResNet-18/34).
    Basic,
    /// 1x1 reduce, 3x3 (carries the stride, as torchvision "ResNet v1.5"), 1x1 expand x4 (50/101/152).
    Bottleneck,
}

impl BlockKind {
    /// Output channels of a block relative to its `planes`.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// Configuration of a ResNet. Every field has a documented default; `validate` checks the ranges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResNetConfig {
    /// 18, 34, 50, 101 or 152. Default 18.
    pub depth: usize,
    /// Classifier outputs. Default 10 (CIFAR-10).
    pub num_classes: usize,
    /// Input stem. Default `cifar`.
    pub stem: Stem,
    /// Base planes (channels of the stem and layer1). torchvision uses 64; tests use 4-8. Default 64.
    pub width: usize,
    /// BatchNorm momentum, PyTorch meaning: running = (1-m)*running + m*batch. Default 0.1.
    pub bn_momentum: f64,
    /// BatchNorm epsilon. Default 1e-5.
    pub bn_eps: f64,
    /// Start each residual branch's last BatchNorm at gamma = 0 (Goyal et al.). Default false.
    pub zero_init_residual: bool,
    /// Dropout probability before the classifier. Default 0.
    pub dropout: f64,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        Self {
            depth: 18,
            num_classes: 10,
            stem: Stem::Cifar,
            width: 64,
            bn_momentum: 0.1,
            bn_eps: 1e-5,
            zero_init_residual: false,
            dropout: 0.0,
        }
    }
}

impl ResNetConfig {
    /// A config for `depth` and `num_classes` with every other field at its default.
    pub fn new(depth: usize, num_classes: usize) -> Self {
        Self {
            depth,
            num_classes,
            ..Self::default()
        }
    }

    /// Blocks per stage and the block type, from the ResNet paper's table.
    pub fn stage_plan(&self) -> Result<([usize; 4], BlockKind), ModelError> {
        match self.depth {
            18 => Ok(([2, 2, 2, 2], BlockKind::Basic)),
            34 => Ok(([3, 4, 6, 3], BlockKind::Basic)),
            50 => Ok(([3, 4, 6, 3], BlockKind::Bottleneck)),
            101 => Ok(([3, 4, 23, 3], BlockKind::Bottleneck)),
            152 => Ok(([3, 8, 36, 3], BlockKind::Bottleneck)),
            d => Err(ModelError::Config(format!(
                "depth {d} is not supported, expected one of 18, 34, 50, 101, 152"
            ))),
        }
    }

    /// Checks every field; the error names the field and the expected range.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.stage_plan()?;
        let bad = |field: &str, what: String| Err(ModelError::Config(format!("{field}: {what}")));
        if self.num_classes == 0 {
            return bad("num_classes", "must be at least 1".into());
        }
        if self.width == 0 {
            return bad("width", "must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.bn_momentum) {
            return bad(
                "bn_momentum",
                format!("{} is outside 0..=1", self.bn_momentum),
            );
        }
        if !(self.bn_eps > 0.0) {
            return bad("bn_eps", format!("{} must be > 0", self.bn_eps));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", format!("{} is outside 0..1", self.dropout));
        }
        Ok(())
    }

    /// Channels leaving the last stage (the classifier's input).
    pub fn feature_dim(&self) -> Result<usize, ModelError> {
        let (_, kind) = self.stage_plan()?;
        Ok(self.width * 8 * kind.expansion())
    }
}
