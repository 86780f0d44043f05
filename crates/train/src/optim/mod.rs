//! Optimizers with PyTorch's defaults, chosen at run time, with checkpointable state; on the CPU
//! the update runs fused ([`fused`]), in Burn's arithmetic.
//!
//! Burn's defaults differ from PyTorch's in places that silently change training: SGD momentum
//! dampening (Burn 0.1, PyTorch 0), Adam epsilon (Burn 1e-5, PyTorch 1e-8), AdamW weight decay
//! (Burn 1e-4, PyTorch 1e-2). Every value is set explicitly here.

mod fused;

use std::any::TypeId;
use std::path::Path;

use burn::backend::Flex;

use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{
    Adam, AdamConfig, AdamW, AdamWConfig, GradientsParams, Optimizer, Sgd, SgdConfig,
};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use resnet_kernels::optim::UpdateRule;
use resnet_kernels::CpuOptim;
use resnet_model::ResNet;
use serde::{Deserialize, Serialize};

use crate::TrainError;
pub use fused::FusedOptimizer;

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

    /// Builds the optimizer for a ResNet on backend `B`. Which implementation updates the
    /// parameters follows the model's [`KernelChoice`](resnet_kernels::KernelChoice) at each
    /// step (see [`AnyOptimizer`]).
    pub fn init<B: AutodiffBackend>(&self) -> AnyOptimizer<B> {
        AnyOptimizer {
            config: self.clone(),
            imp: Imp::Burn(self.burn()),
        }
    }

    /// Burn's optimizer with these settings.
    fn burn<B: AutodiffBackend>(&self) -> BurnOptim<B> {
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
                BurnOptim::Sgd(
                    SgdConfig::new()
                        .with_momentum(momentum)
                        .with_weight_decay(wd)
                        .init(),
                )
            }
            OptimizerKind::Adam => BurnOptim::Adam(
                AdamConfig::new()
                    .with_beta_1(self.beta1 as f32)
                    .with_beta_2(self.beta2 as f32)
                    .with_epsilon(self.eps as f32)
                    .with_weight_decay(wd)
                    .init(),
            ),
            OptimizerKind::Adamw => BurnOptim::AdamW(
                AdamWConfig::new()
                    .with_beta_1(self.beta1 as f32)
                    .with_beta_2(self.beta2 as f32)
                    .with_epsilon(self.eps as f32)
                    .with_weight_decay(self.weight_decay as f32)
                    .init(),
            ),
        }
    }

    /// The per-element rule of the fused CPU update: the values Burn's optimizer above holds,
    /// converted as Burn converts them (momentum f64 -> f32, dampening 0 -> factor 1).
    pub(crate) fn rule(&self) -> UpdateRule {
        let wd = (self.weight_decay > 0.0).then_some(self.weight_decay as f32);
        match self.kind {
            OptimizerKind::Sgd => UpdateRule::Sgd {
                momentum: (self.momentum > 0.0).then_some(self.momentum as f32),
                keep: 1.0,
                nesterov: self.nesterov,
                weight_decay: wd,
            },
            OptimizerKind::Adam => UpdateRule::Adam {
                beta_1: self.beta1 as f32,
                beta_2: self.beta2 as f32,
                epsilon: self.eps as f32,
                weight_decay: wd,
            },
            OptimizerKind::Adamw => UpdateRule::AdamW {
                beta_1: self.beta1 as f32,
                beta_2: self.beta2 as f32,
                epsilon: self.eps as f32,
                weight_decay: self.weight_decay as f32,
            },
        }
    }
}

/// Burn's optimizer of one kind over a ResNet: the state format of `optim.mpk`.
#[derive(Clone)]
pub(crate) enum BurnOptim<B: AutodiffBackend> {
    /// SGD.
    Sgd(OptimizerAdaptor<Sgd<B::InnerBackend>, ResNet<B>, B>),
    /// Adam.
    Adam(OptimizerAdaptor<Adam, ResNet<B>, B>),
    /// AdamW.
    AdamW(OptimizerAdaptor<AdamW, ResNet<B>, B>),
}

/// The run's optimizer over a ResNet, with checkpointable state.
///
/// Two implementations hold the state: Burn's optimizers (a chain of tensor ops per parameter,
/// any backend) and, on the CPU, [`FusedOptimizer`] (one in-place pass per parameter, the same
/// bits). Each step uses the one the model's `KernelChoice::cpu_optim` names, converting the
/// state once when the choice changes; checkpoints are always written in Burn's format, so
/// either reads what the other wrote.
#[derive(Clone)]
pub struct AnyOptimizer<B: AutodiffBackend> {
    config: OptimConfig,
    imp: Imp<B>,
}

#[derive(Clone)]
enum Imp<B: AutodiffBackend> {
    Burn(BurnOptim<B>),
    Fused(FusedOptimizer<B>),
}

impl<B: AutodiffBackend> AnyOptimizer<B> {
    /// Applies one update with learning rate `lr`.
    pub fn step(&mut self, lr: f64, model: ResNet<B>, grads: GradientsParams) -> ResNet<B> {
        let fused = model.kernels.cpu_optim == CpuOptim::Fused
            && TypeId::of::<B::InnerBackend>() == TypeId::of::<Flex>();
        self.use_fused(fused);
        match &mut self.imp {
            Imp::Fused(f) => f.step(lr, model, grads),
            Imp::Burn(BurnOptim::Sgd(o)) => o.step(lr, model, grads),
            Imp::Burn(BurnOptim::Adam(o)) => o.step(lr, model, grads),
            Imp::Burn(BurnOptim::AdamW(o)) => o.step(lr, model, grads),
        }
    }

    /// Whether the fused CPU update runs the steps (for tests and logs).
    pub fn is_fused(&self) -> bool {
        matches!(self.imp, Imp::Fused(_))
    }

    /// Moves the state to the implementation asked for (a no-op when it is there already).
    fn use_fused(&mut self, fused: bool) {
        let imp = match (&self.imp, fused) {
            (Imp::Burn(b), true) => Imp::Fused(FusedOptimizer::new(self.config.rule(), b.clone())),
            (Imp::Fused(f), false) => Imp::Burn(f.to_burn()),
            _ => return,
        };
        self.imp = imp;
    }

    /// Burn's optimizer holding the current state (the checkpoint format).
    fn burn_state(&self) -> BurnOptim<B> {
        match &self.imp {
            Imp::Burn(b) => b.clone(),
            Imp::Fused(f) => f.to_burn(),
        }
    }

    /// Writes the optimizer state (momentum buffers, Adam moments, step counts) to `path`.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        // Through `record_io`: Burn's file recorder would hide a full disk's cause.
        let what = "optimizer state";
        match self.burn_state() {
            BurnOptim::Sgd(o) => crate::record_io::write::<B, _>(path, o.to_record(), what),
            BurnOptim::Adam(o) => crate::record_io::write::<B, _>(path, o.to_record(), what),
            BurnOptim::AdamW(o) => crate::record_io::write::<B, _>(path, o.to_record(), what),
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
        let burn = match self.config.burn::<B>() {
            BurnOptim::Sgd(o) => {
                BurnOptim::Sgd(o.load_record(rec.load(path.to_path_buf(), device).map_err(err)?))
            }
            BurnOptim::Adam(o) => {
                BurnOptim::Adam(o.load_record(rec.load(path.to_path_buf(), device).map_err(err)?))
            }
            BurnOptim::AdamW(o) => {
                BurnOptim::AdamW(o.load_record(rec.load(path.to_path_buf(), device).map_err(err)?))
            }
        };
        // The next step moves it to the fused update if the model's kernels ask for that.
        Ok(Self {
            config: self.config,
            imp: Imp::Burn(burn),
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
