//! Learning-rate schedules as pure functions of the global step.
//!
//! Being stateless is deliberate: a resumed run (or a rank that joins late) recomputes the exact
//! LR from the step alone, so schedules need no checkpointed state. Step decay counts **epochs**
//! (the original tutorial stepped `StepLR` per batch, decaying ~390x faster than it meant to).

use serde::{Deserialize, Serialize};

use crate::SpecError;

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
    /// Cyclical, triangular (Smith 2017, PyTorch `CyclicLR(mode="triangular")`): linear from
    /// `cycle_low` x base up to the base LR and back, every `cycle_epochs` epochs.
    Cyclic,
    /// Reduce on plateau (PyTorch `ReduceLROnPlateau`, mode min, relative threshold): the base LR,
    /// multiplied by `gamma` whenever the validation loss (training loss when the run has no test
    /// split) has not improved for more than `patience` epochs.
    Plateau,
}

impl std::str::FromStr for ScheduleKind {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "constant" => Ok(Self::Constant),
            "step" => Ok(Self::Step),
            "cosine" => Ok(Self::Cosine),
            "onecycle" => Ok(Self::Onecycle),
            "cyclic" | "cyclical" | "triangular" => Ok(Self::Cyclic),
            "plateau" | "reduceonplateau" => Ok(Self::Plateau),
            o => Err(SpecError::Config(format!(
                "unknown schedule '{o}', expected constant, step, cosine, onecycle, cyclic or plateau"
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
    /// Decay factor of `step` and `plateau`. Default 0.1.
    pub gamma: f64,
    /// Floor of the cosine schedule. Default 0.
    pub min_lr: f64,
    /// One-cycle: fraction of the run spent rising. Default 0.3.
    pub pct_start: f64,
    /// Cyclic: length of one full up-and-down cycle in epochs (fractions allowed). Default 4.
    pub cycle_epochs: f64,
    /// Cyclic: the trough as a fraction of the base LR. Default 0.1.
    pub cycle_low: f64,
    /// Plateau: epochs without improvement tolerated before each reduction. Default 2.
    pub patience: usize,
    /// Plateau: an epoch improves when its loss is below `best * (1 - threshold)`. Default 1e-4.
    pub threshold: f64,
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
            cycle_epochs: 4.0,
            cycle_low: 0.1,
            patience: 2,
            threshold: 1e-4,
        }
    }
}

impl ScheduleConfig {
    /// LR at global `step` (0-based) of `total_steps`, with `steps_per_epoch` steps per epoch.
    /// `plateau` runs at the base LR here; [`Self::lr_with_losses`] applies its reductions.
    pub fn lr(&self, base: f64, step: usize, steps_per_epoch: usize, total_steps: usize) -> f64 {
        self.lr_with_losses(base, step, steps_per_epoch, total_steps, &[])
    }

    /// As [`Self::lr`], with the per-epoch validation losses seen so far (only `plateau` reads
    /// them). The LR stays a pure function of the step and the recorded history, which a
    /// checkpoint holds, so resumed runs follow the same curve.
    pub fn lr_with_losses(
        &self,
        base: f64,
        step: usize,
        steps_per_epoch: usize,
        total_steps: usize,
        losses: &[f64],
    ) -> f64 {
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
            ScheduleKind::Cyclic => {
                let cycle = (self.cycle_epochs * spe).max(1.0);
                let pos = (t / cycle).fract();
                let tri = 1.0 - (2.0 * pos - 1.0).abs(); // 0 -> 1 -> 0 over a cycle
                base * (self.cycle_low + (1.0 - self.cycle_low) * tri)
            }
            ScheduleKind::Plateau => base * self.gamma.powi(self.plateau_reductions(losses) as i32),
        };
        let warm = self.warmup_epochs * spe;
        if warm > 0.0 && t < warm {
            lr * (t + 1.0) / warm
        } else {
            lr
        }
    }

    /// How many times `plateau` has reduced the LR after these per-epoch losses.
    pub fn plateau_reductions(&self, losses: &[f64]) -> u32 {
        let (mut best, mut bad, mut cuts) = (f64::INFINITY, 0usize, 0u32);
        for &l in losses {
            if l < best * (1.0 - self.threshold) {
                best = l;
                bad = 0;
            } else {
                bad += 1;
                if bad > self.patience {
                    cuts += 1;
                    bad = 0;
                }
            }
        }
        cuts
    }

    /// Checks ranges; errors name the field.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !(self.cycle_epochs > 0.0)
            || !self.cycle_epochs.is_finite()
            || !(0.0..=1.0).contains(&self.cycle_low)
        {
            return Err(SpecError::Config(
                "schedule.cycle_epochs must be > 0 and schedule.cycle_low in 0..=1".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.threshold) {
            return Err(SpecError::Config(
                "schedule.threshold must be in 0..1".into(),
            ));
        }
        if !(self.warmup_epochs >= 0.0) || !self.warmup_epochs.is_finite() {
            return Err(SpecError::Config(
                "schedule.warmup_epochs must be a finite number >= 0".into(),
            ));
        }
        if !(self.gamma > 0.0) || !self.gamma.is_finite() {
            return Err(SpecError::Config(
                "schedule.gamma must be a finite number > 0".into(),
            ));
        }
        if !(self.min_lr >= 0.0) || !self.min_lr.is_finite() {
            return Err(SpecError::Config(
                "schedule.min_lr must be a finite number >= 0".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.pct_start) {
            return Err(SpecError::Config(
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
    fn cyclic_is_a_triangle_between_low_and_base() {
        let c = cfg(ScheduleKind::Cyclic); // 4-epoch cycle, trough 0.1
        assert!((c.lr(1.0, 0, 10, 1000) - 0.1).abs() < 1e-12);
        assert!((c.lr(1.0, 10, 10, 1000) - 0.55).abs() < 1e-12);
        assert!((c.lr(1.0, 20, 10, 1000) - 1.0).abs() < 1e-12);
        assert!((c.lr(1.0, 30, 10, 1000) - 0.55).abs() < 1e-12);
        assert!((c.lr(1.0, 40, 10, 1000) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn plateau_reduces_after_patience_epochs_without_improvement() {
        let p = cfg(ScheduleKind::Plateau); // patience 2, gamma 0.1
        let losses = [1.0, 0.9, 0.9, 0.95, 0.91, 0.8, 0.8, 0.8, 0.8];
        // Epochs 3-5 do not improve on 0.9: the third one triggers the first cut.
        assert_eq!(p.plateau_reductions(&losses[..4]), 0);
        assert_eq!(p.plateau_reductions(&losses[..5]), 1);
        assert_eq!(p.plateau_reductions(&losses), 2);
        assert!((p.lr_with_losses(1.0, 0, 10, 100, &losses[..5]) - 0.1).abs() < 1e-12);
        assert_eq!(p.lr(1.0, 0, 10, 100), 1.0);
        // A tiny "improvement" below the relative threshold does not count.
        assert_eq!(p.plateau_reductions(&[1.0, 0.99999, 0.99999, 0.99999]), 1);
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
