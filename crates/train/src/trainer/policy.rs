//! When the trainer checkpoints: the run configuration's rules (every `checkpoint_steps` steps,
//! every `checkpoint_epochs` epochs and at the last, every `checkpoint_minutes` by rank 0's
//! clock) and the state they need, as functions of the step, the epoch and `now`.
//!
//! The rules read the configuration at each call (a resumed run may have changed `epochs`);
//! the state is what happened: the last checkpoint's step and time, and whether the group
//! agreed in the last step's all-reduce that a time-based checkpoint is due.

use std::time::Instant;

use crate::TrainConfig;

#[derive(Debug, Clone)]
pub(super) struct CheckpointPolicy {
    /// Step of the last checkpoint (attempted, on every rank).
    taken_at: Option<usize>,
    /// When the last checkpoint was taken (or training started), for `checkpoint_minutes`.
    taken_time: Instant,
    /// The group agreed in the last step's all-reduce that a time-based checkpoint (or a stop,
    /// which saves too) is due.
    pub(super) time_due: bool,
}

impl CheckpointPolicy {
    /// No checkpoint yet; the `checkpoint_minutes` clock starts at `now`.
    pub(super) fn new(now: Instant) -> Self {
        Self {
            taken_at: None,
            taken_time: now,
            time_due: false,
        }
    }

    /// `checkpoint_steps`: whether the step just completed is a multiple of it.
    pub(super) fn step_due(cfg: &TrainConfig, step: usize) -> bool {
        cfg.checkpoint_steps
            .is_some_and(|n| n > 0 && step.is_multiple_of(n))
    }

    /// `checkpoint_minutes` on this rank's clock: that long since the last checkpoint (or the
    /// start). Only rank 0's answer counts; it rides on the step's all-reduce.
    pub(super) fn clock_due(&self, cfg: &TrainConfig, now: Instant) -> bool {
        cfg.checkpoint_minutes.is_some_and(|m| {
            now.saturating_duration_since(self.taken_time).as_secs_f64() >= m * 60.0
        })
    }

    /// At the end of epoch `epoch` (1-based, completed) at step `step`: every
    /// `checkpoint_epochs` epochs and after the last one, unless a checkpoint of this very step
    /// was just taken (it holds the same state).
    pub(super) fn epoch_due(&self, cfg: &TrainConfig, epoch: usize, step: usize) -> bool {
        let due = cfg.checkpoint_epochs > 0 && epoch.is_multiple_of(cfg.checkpoint_epochs);
        (due || epoch == cfg.epochs) && !self.fresh(step)
    }

    /// Whether the last checkpoint is of step `step` (the end of the run needs no other).
    pub(super) fn fresh(&self, step: usize) -> bool {
        self.taken_at == Some(step)
    }

    /// A checkpoint of `step` was taken (attempted) at `now`.
    pub(super) fn taken(&mut self, step: usize, now: Instant) {
        self.taken_at = Some(step);
        self.taken_time = now;
    }

    /// The last checkpoint's step, for the rollback snapshot.
    pub(super) fn taken_at(&self) -> Option<usize> {
        self.taken_at
    }

    /// Back to a snapshot's last checkpoint step (its clock stays: time went on).
    pub(super) fn restore_taken_at(&mut self, step: Option<usize>) {
        self.taken_at = step;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn steps_rule() {
        let cfg = TrainConfig {
            checkpoint_steps: Some(5),
            ..TrainConfig::default()
        };
        let due: Vec<usize> = (1..=12)
            .filter(|&s| CheckpointPolicy::step_due(&cfg, s))
            .collect();
        assert_eq!(due, vec![5, 10]);
        for steps in [None, Some(0)] {
            let cfg = TrainConfig {
                checkpoint_steps: steps,
                ..TrainConfig::default()
            };
            assert!(!(1..=12).any(|s| CheckpointPolicy::step_due(&cfg, s)));
        }
    }

    #[test]
    fn minutes_rule_counts_from_the_last_checkpoint() {
        let t0 = Instant::now();
        let cfg = TrainConfig {
            checkpoint_minutes: Some(0.5),
            ..TrainConfig::default()
        };
        let mut p = CheckpointPolicy::new(t0);
        assert!(!p.clock_due(&cfg, t0 + Duration::from_secs(29)));
        assert!(p.clock_due(&cfg, t0 + Duration::from_secs(30)));
        p.taken(7, t0 + Duration::from_secs(30));
        assert!(!p.clock_due(&cfg, t0 + Duration::from_secs(59)));
        assert!(p.clock_due(&cfg, t0 + Duration::from_secs(60)));
        // Without the rule, never.
        assert!(!p.clock_due(&TrainConfig::default(), t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn epochs_rule_and_the_last_epoch_skip_a_checkpoint_of_the_same_step() {
        let t0 = Instant::now();
        let cfg = TrainConfig {
            epochs: 5,
            checkpoint_epochs: 2,
            ..TrainConfig::default()
        };
        let mut p = CheckpointPolicy::new(t0);
        let due: Vec<usize> = (1..=5).filter(|&e| p.epoch_due(&cfg, e, e * 10)).collect();
        assert_eq!(due, vec![2, 4, 5], "every 2nd epoch and the last");
        p.taken(40, t0);
        assert!(
            !p.epoch_due(&cfg, 4, 40),
            "a step checkpoint at 40 holds it"
        );
        assert!(p.fresh(40) && !p.fresh(41));
        p.restore_taken_at(None);
        assert!(p.epoch_due(&cfg, 4, 40) && p.taken_at().is_none());
        let never = TrainConfig {
            checkpoint_epochs: 0,
            ..cfg
        };
        assert!(!p.epoch_due(&never, 2, 20) && p.epoch_due(&never, 5, 50));
    }
}
