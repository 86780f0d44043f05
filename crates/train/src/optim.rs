//! Optimizers with PyTorch's defaults, chosen at run time, with checkpointable state.
//!
//! Burn's defaults differ from PyTorch's in places that silently change training: SGD momentum
//! dampening (Burn 0.1, PyTorch 0), Adam epsilon (Burn 1e-5, PyTorch 1e-8), AdamW weight decay
//! (Burn 1e-4, PyTorch 1e-2). Every value is set explicitly here.

use std::path::Path;

use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{
    Adam, AdamConfig, AdamW, AdamWConfig, GradientsParams, Optimizer, Sgd, SgdConfig,
};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use resnet_model::ResNet;
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Which optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with (Nesterov) momentum and L2 weight decay.
    #[default]
    Sgd,
    /// Adam with L2 weight decay added to the gradient (PyTorch `Adam(weight_decay=...)`).
    Adam,
    /// AdamW: decoupled weight decay.
    Adamw,
}

impl std::str::FromStr for OptimizerKind {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sgd" => Ok(Self::Sgd),
            "adam" => Ok(Self::Adam),
            "adamw" => Ok(Self::Adamw),
            o => Err(TrainError::Config(format!(
                "unknown optimizer '{o}', expected sgd, adam or adamw"
            ))),
        }
    }
}

/// Optimizer configuration; every field has a documented default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Optimizer. Default `sgd`.
    pub kind: OptimizerKind,
    /// Base learning rate (before the schedule). Default 0.1 (SGD on CIFAR, batch 128).
    pub lr: f64,
    /// SGD momentum; 0 disables. Default 0.9.
    pub momentum: f64,
    /// Nesterov momentum. Default false.
    pub nesterov: bool,
    /// Weight decay: L2 for SGD/Adam, decoupled for AdamW. Default 5e-4.
    pub weight_decay: f64,
    /// Adam beta1. Default 0.9.
    pub beta1: f64,
    /// Adam beta2. Default 0.999.
    pub beta2: f64,
    /// Adam epsilon. Default 1e-8 (PyTorch; Burn's own default is 1e-5).
    pub eps: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Sgd,
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

impl OptimConfig {
    /// Checks ranges; errors name the field.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |f: &str, w: &str| Err(TrainError::Config(format!("optim.{f}: {w}")));
        // `!(x > 0.0)` also refuses NaN; infinity is refused by name (an infinite LR passed
        // validation once and trained on NaN).
        if !(self.lr > 0.0) || !self.lr.is_finite() {
            return bad("lr", "must be a finite number > 0");
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum", "must be in 0..1");
        }
        if !(self.weight_decay >= 0.0) || !self.weight_decay.is_finite() {
            return bad("weight_decay", "must be a finite number >= 0");
        }
        if !(self.eps > 0.0) || !self.eps.is_finite() {
            return bad("eps", "must be a finite number > 0");
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("beta1/beta2", "must be in 0..1");
        }
        if self.nesterov && self.momentum == 0.0 {
            return bad("nesterov", "needs momentum > 0");
        }
        Ok(())
    }

    /// Builds the optimizer for a ResNet on backend `B`.
    pub fn init<B: AutodiffBackend>(&self) -> AnyOptimizer<B> {
        let wd = (self.weight_decay > 0.0).then_some(WeightDecayConfig {
            penalty: self.weight_decay as f32,
        });
        match self.kind {
            OptimizerKind::Sgd => {
                let momentum = (self.momentum > 0.0).then_some(MomentumConfig {
                    momentum: self.momentum,
                    dampening: 0.0,
                    nesterov: self.nesterov,
                });
                AnyOptimizer::Sgd(
                    SgdConfig::new()
                        .with_momentum(momentum)
                        .with_weight_decay(wd)
                        .init(),
                )
            }
            OptimizerKind::Adam => AnyOptimizer::Adam(
                AdamConfig::new()
                    .with_beta_1(self.beta1 as f32)
                    .with_beta_2(self.beta2 as f32)
                    .with_epsilon(self.eps as f32)
                    .with_weight_decay(wd)
                    .init(),
            ),
            OptimizerKind::Adamw => AnyOptimizer::AdamW(
                AdamWConfig::new()
                    .with_beta_1(self.beta1 as f32)
                    .with_beta_2(self.beta2 as f32)
                    .with_epsilon(self.eps as f32)
                    .with_weight_decay(self.weight_decay as f32)
                    .init(),
            ),
        }
    }
}

/// One of the supported optimizers over a ResNet.
#[derive(Clone)]
pub enum AnyOptimizer<B: AutodiffBackend> {
    /// SGD.
    Sgd(OptimizerAdaptor<Sgd<B::InnerBackend>, ResNet<B>, B>),
    /// Adam.
    Adam(OptimizerAdaptor<Adam, ResNet<B>, B>),
    /// AdamW.
    AdamW(OptimizerAdaptor<AdamW, ResNet<B>, B>),
}

impl<B: AutodiffBackend> AnyOptimizer<B> {
    /// Applies one update with learning rate `lr`.
    pub fn step(&mut self, lr: f64, model: ResNet<B>, grads: GradientsParams) -> ResNet<B> {
        match self {
            AnyOptimizer::Sgd(o) => o.step(lr, model, grads),
            AnyOptimizer::Adam(o) => o.step(lr, model, grads),
            AnyOptimizer::AdamW(o) => o.step(lr, model, grads),
        }
    }

    /// Writes the optimizer state (momentum buffers, Adam moments, step counts) to `path`.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        // Through `record_io`: Burn's file recorder would hide a full disk's cause.
        let what = "optimizer state";
        match self {
            AnyOptimizer::Sgd(o) => crate::record_io::write::<B, _>(path, o.to_record(), what),
            AnyOptimizer::Adam(o) => crate::record_io::write::<B, _>(path, o.to_record(), what),
            AnyOptimizer::AdamW(o) => crate::record_io::write::<B, _>(path, o.to_record(), what),
        }
    }

    /// Restores state written by [`save`](Self::save) by the same optimizer kind.
    pub fn load(self, path: &Path, device: &B::Device) -> Result<Self, TrainError> {
        let rec = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        let err = |e: burn::record::RecorderError| {
            TrainError::Checkpoint(format!(
                "{}: cannot read optimizer state: {e}",
                path.display()
            ))
        };
        Ok(match self {
            AnyOptimizer::Sgd(o) => {
                AnyOptimizer::Sgd(o.load_record(rec.load(path.to_path_buf(), device).map_err(err)?))
            }
            AnyOptimizer::Adam(o) => AnyOptimizer::Adam(
                o.load_record(rec.load(path.to_path_buf(), device).map_err(err)?),
            ),
            AnyOptimizer::AdamW(o) => AnyOptimizer::AdamW(
                o.load_record(rec.load(path.to_path_buf(), device).map_err(err)?),
            ),
        })
    }
}

#[cfg(test)]
mod validation_tests {
    use super::*;
    use crate::{ScheduleConfig, TrainConfig};

    #[test]
    fn every_float_option_must_be_finite() {
        let optim = |f: fn(&mut OptimConfig)| {
            let mut o = OptimConfig::default();
            f(&mut o);
            o.validate().err().map(|e| e.to_string())
        };
        assert_eq!(optim(|_| {}), None);
        // The reported case: `lr = inf` passed validation and trained on NaN.
        assert_eq!(
            optim(|o| o.lr = f64::INFINITY),
            Some("invalid config: optim.lr: must be a finite number > 0".into())
        );
        assert!(optim(|o| o.lr = f64::NAN).is_some());
        assert!(optim(|o| o.weight_decay = f64::INFINITY).is_some());
        assert!(optim(|o| o.eps = f64::NAN).is_some());
        assert!(optim(|o| o.momentum = f64::NAN).is_some());

        let schedule = |f: fn(&mut ScheduleConfig)| {
            let mut s = ScheduleConfig::default();
            f(&mut s);
            s.validate().is_err()
        };
        assert!(!schedule(|_| {}));
        assert!(schedule(|s| s.warmup_epochs = f64::INFINITY));
        assert!(schedule(|s| s.gamma = f64::INFINITY));
        assert!(schedule(|s| s.min_lr = f64::NAN));
        assert!(schedule(|s| s.cycle_epochs = f64::INFINITY));

        let mut t = TrainConfig::default();
        t.data.image_size = 0;
        assert_eq!(
            t.validate().expect_err("image size").to_string(),
            "invalid config: data.image_size = 0: must be between 1 and 1024 pixels"
        );
    }
}
