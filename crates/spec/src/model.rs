//! The model's configuration: depth, stem, width and the torchvision-compatible defaults.

use serde::{Deserialize, Serialize};

use crate::SpecError;

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
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cifar" => Ok(Stem::Cifar),
            "imagenet" => Ok(Stem::Imagenet),
            other => Err(SpecError::Model(format!(
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
    pub fn stage_plan(&self) -> Result<([usize; 4], BlockKind), SpecError> {
        match self.depth {
            18 => Ok(([2, 2, 2, 2], BlockKind::Basic)),
            34 => Ok(([3, 4, 6, 3], BlockKind::Basic)),
            50 => Ok(([3, 4, 6, 3], BlockKind::Bottleneck)),
            101 => Ok(([3, 4, 23, 3], BlockKind::Bottleneck)),
            152 => Ok(([3, 8, 36, 3], BlockKind::Bottleneck)),
            d => Err(SpecError::Model(format!(
                "depth {d} is not supported, expected one of 18, 34, 50, 101, 152"
            ))),
        }
    }

    /// Checks every field; the error names the field and the expected range.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.stage_plan()?;
        let bad = |field: &str, what: String| Err(SpecError::Model(format!("{field}: {what}")));
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
    pub fn feature_dim(&self) -> Result<usize, SpecError> {
        let (_, kind) = self.stage_plan()?;
        Ok(self.width * 8 * kind.expansion())
    }

    /// Elements of every tensor the model's record holds: the parameters (convolutions without
    /// bias, BatchNorm weight and bias, classifier weight and bias) plus the BatchNorm running
    /// mean and variance. Counted from the architecture, so nothing is built; `resnet-train`
    /// tests it against the Burn model's record for every depth and stem.
    pub fn tensor_elements(&self) -> Result<u64, SpecError> {
        let (blocks, kind) = self.stage_plan()?;
        let w = self.width as u64;
        let conv = |i: u64, o: u64, k: u64| i * o * k * k;
        let bn = |c: u64| 4 * c;
        let stem_k = match self.stem {
            Stem::Cifar => 3,
            Stem::Imagenet => 7,
        };
        let mut n = conv(3, w, stem_k) + bn(w);
        let mut in_ch = w;
        for (stage, count) in blocks.into_iter().enumerate() {
            let planes = w << stage;
            let out = planes * kind.expansion() as u64;
            for i in 0..count {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                n += match kind {
                    BlockKind::Basic => {
                        conv(in_ch, planes, 3) + bn(planes) + conv(planes, planes, 3) + bn(planes)
                    }
                    BlockKind::Bottleneck => {
                        conv(in_ch, planes, 1)
                            + bn(planes)
                            + conv(planes, planes, 3)
                            + bn(planes)
                            + conv(planes, out, 1)
                            + bn(out)
                    }
                };
                if stride != 1 || in_ch != out {
                    n += conv(in_ch, out, 1) + bn(out);
                }
                in_ch = out;
            }
        }
        let classes = self.num_classes as u64;
        Ok(n + in_ch * classes + classes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_elements_match_torchvision_parameter_counts_plus_running_statistics() {
        // torchvision's parameter counts (ImageNet stem, 1000 classes); the record also holds
        // each BatchNorm's running mean and variance (2 per BatchNorm channel).
        for (depth, params, bn_channels) in
            [(18u64, 11_689_512u64, 4_800u64), (50, 25_557_032, 26_560)]
        {
            let cfg = ResNetConfig {
                stem: Stem::Imagenet,
                ..ResNetConfig::new(depth as usize, 1000)
            };
            let n = cfg.tensor_elements().expect("valid depth");
            assert_eq!(n, params + 2 * bn_channels, "ResNet-{depth}");
        }
        assert!(ResNetConfig::new(19, 10).tensor_elements().is_err());
    }
}
