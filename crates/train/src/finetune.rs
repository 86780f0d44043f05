//! Fine-tuning: start from torchvision weights (the classifier is replaced for the dataset's
//! classes), freeze whole stages, and give the backbone its own learning rate.
//!
//! Freezing works on gradients, not on the module: a frozen parameter's gradient is dropped
//! before the optimizer sees it, so neither the update nor weight decay touch it, and its
//! BatchNorm statistics are frozen too. The backbone/head split runs the optimizer twice per step
//! with two learning rates over disjoint parameter sets (per-parameter state is keyed by id, so
//! momentum and Adam moments are unaffected by the split).

use std::path::PathBuf;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use resnet_model::ResNet;
use serde::{Deserialize, Serialize};

use crate::TrainError;

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
    pub fn validate(&self) -> Result<(), TrainError> {
        for f in &self.freeze {
            if !FREEZABLE.contains(&f.as_str()) {
                return Err(TrainError::Config(format!(
                    "finetune.freeze: unknown part '{f}', expected any of {}",
                    FREEZABLE.join(", ")
                )));
            }
        }
        let s = self.backbone_lr_scale;
        if !(s >= 0.0) || !s.is_finite() {
            return Err(TrainError::Config(
                "finetune.backbone_lr_scale must be >= 0".into(),
            ));
        }
        Ok(())
    }

    /// True when the optimizer must run separately for the head.
    pub fn splits_head(&self) -> bool {
        self.backbone_lr_scale != 1.0
    }

    /// Freezes the BatchNorm statistics of the frozen parts.
    pub fn freeze_batchnorm<B: AutodiffBackend>(&self, mut model: ResNet<B>) -> ResNet<B> {
        if self.freezes("stem") {
            model.bn1.frozen_stats = true;
        }
        for (i, stage) in [
            &mut model.layer1,
            &mut model.layer2,
            &mut model.layer3,
            &mut model.layer4,
        ]
        .into_iter()
        .enumerate()
        {
            if self.freezes(FREEZABLE[i + 1]) {
                for block in stage.iter_mut() {
                    for bn in block.batchnorms_mut() {
                        bn.frozen_stats = true;
                    }
                }
            }
        }
        model
    }

    fn freezes(&self, part: &str) -> bool {
        self.freeze.iter().any(|f| f == part)
    }

    /// Drops the gradients of frozen parameters.
    pub fn drop_frozen<B: AutodiffBackend>(&self, model: &ResNet<B>, grads: &mut GradientsParams) {
        if self.freeze.is_empty() {
            return;
        }
        let mut drop = Drop { grads };
        if self.freezes("stem") {
            model.conv1.visit(&mut drop);
            model.bn1.visit(&mut drop);
        }
        for (i, stage) in model.stages().into_iter().enumerate() {
            if self.freezes(FREEZABLE[i + 1]) {
                for block in stage {
                    block.visit(&mut drop);
                }
            }
        }
    }
}

struct Drop<'a> {
    grads: &'a mut GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Drop<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = self.grads.remove::<B::InnerBackend, D>(param.id);
    }
}

struct Take<'a> {
    from: &'a mut GradientsParams,
    into: GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Take<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.from.remove::<B::InnerBackend, D>(param.id) {
            self.into.register::<B::InnerBackend, D>(param.id, g);
        }
    }
}

/// Moves the classifier's gradients out of `grads` into their own set.
pub fn take_head_grads<B: AutodiffBackend>(
    model: &ResNet<B>,
    grads: &mut GradientsParams,
) -> GradientsParams {
    let mut take = Take {
        from: grads,
        into: GradientsParams::new(),
    };
    model.fc.visit(&mut take);
    take.into
}
