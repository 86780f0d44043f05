//! Learning-rate schedules as pure functions of the global step.
//!
//! Being stateless is deliberate: a resumed run (or a rank that joins late) recomputes the exact
//! LR from the step alone, so schedules need no checkpointed state. Step decay counts **epochs**
//! (the original tutorial stepped `StepLR` per batch, decaying ~390x faster than it meant to).

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Shape of the schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Base LR throughout.
    Constant,
    /// Multiply by `gamma` every `step_epochs` epochs.
    Step,
    /// Cosine from the base LR to `min_lr` over the run.
    #[default]
    Cosine,
    /// One-cycle (PyTorch `OneCycleLR` defaults): cosine up from base/25 to the base LR over the
    /// first 30% of steps, then cosine down to base/1e4.
    Onecycle,
}

impl std::str::FromStr for ScheduleKind {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "constant" => Ok(Self::Constant),
            "step" => Ok(Self::Step),
            "cosine" => Ok(Self::Cosine),
            "onecycle" => Ok(Self::Onecycle),
            o => Err(TrainError::Config(format!(
                "unknown schedule '{o}', expected constant, step, cosine or onecycle"
            ))),
        }
    }
}

/// Schedule configuration; every field has a documented default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Shape. Default `cosine`.
    pub kind: ScheduleKind,
    /// Linear warm-up from ~0 to the scheduled LR over this many epochs (fractions allowed).
    /// Default 0.
    pub warmup_epochs: f64,
    /// Step decay period in epochs. Default 30 (torchvision's ImageNet recipe).
    pub step_epochs: usize,
    /// Step decay factor. Default 0.1.
    pub gamma: f64,
    /// Floor of the cosine schedule. Default 0.
    pub min_lr: f64,
    /// One-cycle: fraction of the run spent rising. Default 0.3.
    pub pct_start: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Cosine,
            warmup_epochs: 0.0,
            step_epochs: 30,
            gamma: 0.1,
            min_lr: 0.0,
            pct_start: 0.3,
        }
    }
}

impl ScheduleConfig {
    /// LR at global `step` (0-based) of `total_steps`, with `steps_per_epoch` steps per epoch.
    pub fn lr(&self, base: f64, step: usize, steps_per_epoch: usize, total_steps: usize) -> f64 {
        let spe = steps_per_epoch.max(1) as f64;
        let total = total_steps.max(1) as f64;
        let t = step as f64;
        let cos = |from: f64, to: f64, frac: f64| {
            to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * frac.clamp(0.0, 1.0)).cos())
        };
        let lr = match self.kind {
            ScheduleKind::Constant => base,
            ScheduleKind::Step => {
                let epoch = (t / spe).floor() as i32;
                base * self.gamma.powi(epoch / self.step_epochs.max(1) as i32)
            }
            ScheduleKind::Cosine => cos(base, self.min_lr, t / total),
            ScheduleKind::Onecycle => {
                let up = (self.pct_start * total).max(1.0);
                if t < up {
                    cos(base / 25.0, base, t / up)
                } else {
                    cos(base, base / 25.0 / 1e4, (t - up) / (total - up).max(1.0))
                }
            }
        };
        let warm = self.warmup_epochs * spe;
        if warm > 0.0 && t < warm {
            lr * (t + 1.0) / warm
        } else {
            lr
        }
    }

    /// Checks ranges; errors name the field.
    pub fn validate(&self) -> Result<(), TrainError> {
        if !(self.warmup_epochs >= 0.0) {
            return Err(TrainError::Config(
                "schedule.warmup_epochs must be >= 0".into(),
            ));
        }
        if !(self.gamma > 0.0) {
            return Err(TrainError::Config("schedule.gamma must be > 0".into()));
        }
        if !(0.0..1.0).contains(&self.pct_start) {
            return Err(TrainError::Config(
                "schedule.pct_start must be in 0..1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: ScheduleKind) -> ScheduleConfig {
        ScheduleConfig {
            kind,
            ..Default::default()
        }
    }

    #[test]
    fn step_decays_per_epoch_not_per_batch() {
        let s = ScheduleConfig {
            kind: ScheduleKind::Step,
            step_epochs: 2,
            gamma: 0.1,
            ..Default::default()
        };
        // 100 steps per epoch: epochs 0-1 at base, 2-3 at base/10.
        assert_eq!(s.lr(1.0, 0, 100, 1000), 1.0);
        assert_eq!(s.lr(1.0, 199, 100, 1000), 1.0);
        assert!((s.lr(1.0, 200, 100, 1000) - 0.1).abs() < 1e-12);
        assert!((s.lr(1.0, 450, 100, 1000) - 0.01).abs() < 1e-12);
    }

    #[test]
    fn cosine_and_onecycle_endpoints() {
        let c = cfg(ScheduleKind::Cosine);
        assert_eq!(c.lr(0.1, 0, 10, 100), 0.1);
        assert!((c.lr(0.1, 50, 10, 100) - 0.05).abs() < 1e-12);
        assert!(c.lr(0.1, 100, 10, 100).abs() < 1e-12);
        let o = cfg(ScheduleKind::Onecycle);
        assert!((o.lr(1.0, 0, 10, 100) - 0.04).abs() < 1e-12);
        assert!((o.lr(1.0, 30, 10, 100) - 1.0).abs() < 1e-12);
        assert!(o.lr(1.0, 100, 10, 100) < 1e-5);
    }

    #[test]
    fn warmup_ramps_linearly() {
        let s = ScheduleConfig {
            kind: ScheduleKind::Constant,
            warmup_epochs: 1.0,
            ..Default::default()
        };
        assert!((s.lr(1.0, 0, 10, 100) - 0.1).abs() < 1e-12);
        assert!((s.lr(1.0, 4, 10, 100) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr(1.0, 10, 10, 100), 1.0);
    }
}
