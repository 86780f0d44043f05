//! Analytic output shapes per stage, for `resnet info`.

use serde::Serialize;

use crate::ModelError;
use resnet_spec::{ResNetConfig, Stem};

/// The shape of one named stage's output for a single image, `[C, H, W]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageShape {
    /// `stem`, `layer1` .. `layer4`, `pool`, `fc`.
    pub name: String,
    /// `[C, H, W]` (or `[features]` after pooling).
    pub shape: Vec<usize>,
}

fn out(size: usize, k: usize, s: usize, p: usize) -> usize {
    (size + 2 * p).saturating_sub(k) / s + 1
}

/// Output shape of each stage for a `[3, size, size]` input.
pub fn stage_shapes(cfg: &ResNetConfig, size: usize) -> Result<Vec<StageShape>, ModelError> {
    let (_, kind) = cfg.stage_plan()?;
    let w = cfg.width;
    let mut hw = match cfg.stem {
        Stem::Cifar => out(size, 3, 1, 1),
        Stem::Imagenet => out(out(size, 7, 2, 3), 3, 2, 1),
    };
    let mut v = vec![StageShape {
        name: "stem".into(),
        shape: vec![w, hw, hw],
    }];
    for (i, planes) in [w, 2 * w, 4 * w, 8 * w].into_iter().enumerate() {
        if i > 0 {
            // The first block of stages 2-4 strides by 2 through a 3x3 conv with padding 1.
            hw = out(hw, 3, 2, 1);
        }
        v.push(StageShape {
            name: format!("layer{}", i + 1),
            shape: vec![planes * kind.expansion(), hw, hw],
        });
    }
    v.push(StageShape {
        name: "pool".into(),
        shape: vec![cfg.feature_dim()?],
    });
    v.push(StageShape {
        name: "fc".into(),
        shape: vec![cfg.num_classes],
    });
    Ok(v)
}
