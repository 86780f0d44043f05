//! Optimizers with PyTorch's defaults, chosen at run time, with checkpointable state; on the CPU
//! the update runs fused ([`fused`]), in Burn's arithmetic.
//!
//! Burn's defaults differ from PyTorch's in places that silently change training: SGD momentum
//! dampening (Burn 0.1, PyTorch 0), Adam epsilon (Burn 1e-5, PyTorch 1e-8), AdamW weight decay
//! (Burn 1e-4, PyTorch 1e-2). Every value is set explicitly here, from the settings in
//! [`OptimConfig`].

mod fused;

use std::any::TypeId;
use std::path::Path;

use burn::backend::Flex;

use crate::TrainError;
use crate::{OptimConfig, OptimizerKind};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{
    Adam, AdamConfig, AdamW, AdamWConfig, GradientsParams, Optimizer, Sgd, SgdConfig,
};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
pub use fused::FusedOptimizer;
use resnet_kernels::optim::{updates_on_device, UpdateRule};
use resnet_kernels::{CpuOptim, CudaOptim, KernelChoice};
use resnet_model::ResNet;

/// Builds the run's optimizer from its settings: `cfg.optim.init::<B>()`. A trait because the
/// settings are the Burn-free [`OptimConfig`] of `resnet-spec`.
pub trait BuildOptimizer {
    /// Builds the optimizer for a ResNet on backend `B`. Which implementation updates the
    /// parameters follows the model's [`KernelChoice`](resnet_kernels::KernelChoice) at each
    /// step (see [`AnyOptimizer`]).
    fn init<B: AutodiffBackend>(&self) -> AnyOptimizer<B>;
}

impl BuildOptimizer for OptimConfig {
    fn init<B: AutodiffBackend>(&self) -> AnyOptimizer<B> {
        AnyOptimizer {
            config: self.clone(),
            imp: Imp::Burn(burn_optim(self)),
        }
    }
}

/// Burn's optimizer with these settings.
fn burn_optim<B: AutodiffBackend>(c: &OptimConfig) -> BurnOptim<B> {
    let wd = (c.weight_decay > 0.0).then_some(WeightDecayConfig {
        penalty: c.weight_decay as f32,
    });
    match c.kind {
        OptimizerKind::Sgd => {
            let momentum = (c.momentum > 0.0).then_some(MomentumConfig {
                momentum: c.momentum,
                dampening: 0.0,
                nesterov: c.nesterov,
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
                .with_beta_1(c.beta1 as f32)
                .with_beta_2(c.beta2 as f32)
                .with_epsilon(c.eps as f32)
                .with_weight_decay(wd)
                .init(),
        ),
        OptimizerKind::Adamw => BurnOptim::AdamW(
            AdamWConfig::new()
                .with_beta_1(c.beta1 as f32)
                .with_beta_2(c.beta2 as f32)
                .with_epsilon(c.eps as f32)
                .with_weight_decay(c.weight_decay as f32)
                .init(),
        ),
    }
}

/// The per-element rule of the fused CPU update: the values Burn's optimizer above holds,
/// converted as Burn converts them (momentum f64 -> f32, dampening 0 -> factor 1).
pub(crate) fn rule(c: &OptimConfig) -> UpdateRule {
    let wd = (c.weight_decay > 0.0).then_some(c.weight_decay as f32);
    match c.kind {
        OptimizerKind::Sgd => UpdateRule::Sgd {
            momentum: (c.momentum > 0.0).then_some(c.momentum as f32),
            keep: 1.0,
            nesterov: c.nesterov,
            weight_decay: wd,
        },
        OptimizerKind::Adam => UpdateRule::Adam {
            beta_1: c.beta1 as f32,
            beta_2: c.beta2 as f32,
            epsilon: c.eps as f32,
            weight_decay: wd,
        },
        OptimizerKind::Adamw => UpdateRule::AdamW {
            beta_1: c.beta1 as f32,
            beta_2: c.beta2 as f32,
            epsilon: c.eps as f32,
            weight_decay: c.weight_decay as f32,
        },
    }
}

/// Whether the model's kernels ask for the fused update on this backend: `cpu_optim` on the
/// flex CPU backend, `cuda_optim` on the plain CUDA backend; Burn's optimizers elsewhere.
fn fused_applies<B: AutodiffBackend>(k: &KernelChoice) -> bool {
    let cpu = TypeId::of::<B::InnerBackend>() == TypeId::of::<Flex>();
    (cpu && k.cpu_optim == CpuOptim::Fused)
        || (updates_on_device::<B::InnerBackend>() && k.cuda_optim == CudaOptim::Fused)
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
/// any backend) and [`FusedOptimizer`] (on the CPU one in-place pass per parameter, the same
/// bits; on the plain CUDA backend one kernel per parameter). Each step uses the one the
/// model's `KernelChoice::cpu_optim` / `cuda_optim` names, converting the
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
        self.use_fused(fused_applies::<B>(&model.kernels));
        match &mut self.imp {
            Imp::Fused(f) => f.step(lr, model, grads),
            Imp::Burn(BurnOptim::Sgd(o)) => o.step(lr, model, grads),
            Imp::Burn(BurnOptim::Adam(o)) => o.step(lr, model, grads),
            Imp::Burn(BurnOptim::AdamW(o)) => o.step(lr, model, grads),
        }
    }

    /// Whether the fused update (CPU or CUDA) runs the steps (for tests and logs).
    pub fn is_fused(&self) -> bool {
        matches!(self.imp, Imp::Fused(_))
    }

    /// Moves the state to the implementation asked for (a no-op when it is there already).
    fn use_fused(&mut self, fused: bool) {
        let imp = match (&self.imp, fused) {
            (Imp::Burn(b), true) => Imp::Fused(FusedOptimizer::new(rule(&self.config), b.clone())),
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
        let burn = match burn_optim::<B>(&self.config) {
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
