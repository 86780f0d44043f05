//! Fine-tuning: start from torchvision weights (the classifier is replaced for the dataset's
//! classes), freeze whole stages, and give the backbone its own learning rate.
//!
//! Freezing works on gradients, not on the module: a frozen parameter's gradient is dropped
//! before the optimizer sees it, so neither the update nor weight decay touch it, and its
//! BatchNorm statistics are frozen too. The backbone/head split runs the optimizer twice per step
//! with two learning rates over disjoint parameter sets (per-parameter state is keyed by id, so
//! momentum and Adam moments are unaffected by the split).

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use resnet_model::ResNet;

use crate::FinetuneConfig;
use resnet_spec::FREEZABLE;

/// Freezes the BatchNorm statistics of the parts `cfg` freezes.
pub fn freeze_batchnorm<B: AutodiffBackend>(
    cfg: &FinetuneConfig,
    mut model: ResNet<B>,
) -> ResNet<B> {
    if cfg.freezes("stem") {
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
        if cfg.freezes(FREEZABLE[i + 1]) {
            for block in stage.iter_mut() {
                for bn in block.batchnorms_mut() {
                    bn.frozen_stats = true;
                }
            }
        }
    }
    model
}

/// Drops the gradients of the parameters `cfg` freezes.
pub fn drop_frozen<B: AutodiffBackend>(
    cfg: &FinetuneConfig,
    model: &ResNet<B>,
    grads: &mut GradientsParams,
) {
    if cfg.freeze.is_empty() {
        return;
    }
    let mut drop = Drop { grads };
    if cfg.freezes("stem") {
        model.conv1.visit(&mut drop);
        model.bn1.visit(&mut drop);
    }
    for (i, stage) in model.stages().into_iter().enumerate() {
        if cfg.freezes(FREEZABLE[i + 1]) {
            for block in stage {
                block.visit(&mut drop);
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
