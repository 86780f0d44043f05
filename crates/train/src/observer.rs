//! The interface the training loop reports to: the CLI draws progress bars with it, the worker
//! forwards it to the coordinator.

use std::path::Path;

use crate::{CheckpointInfo, EpochCounts, EpochRecord, StepStats};

/// Called by the loop; the CLI draws progress bars with it.
pub trait TrainObserver {
    /// Before the first step: steps per epoch, steps planned in this invocation, step resumed at.
    fn on_start(&mut self, _steps_per_epoch: usize, _last_step: usize, _start_step: usize) {}
    /// After every step.
    fn on_step(&mut self, _s: &StepStats) {}
    /// After every epoch (and its evaluation).
    fn on_epoch(&mut self, _e: &EpochRecord) {}
    /// After a checkpoint is written.
    fn on_checkpoint(&mut self, _dir: &Path, _info: &CheckpointInfo) {}
    /// After a checkpoint could not be written (training goes on).
    fn on_checkpoint_failed(&mut self, _error: &str) {}
    /// After every epoch, and at the end of a run stopped mid-epoch: this rank's exact counts
    /// (data-parallel workers forward them to the coordinator, which sums them).
    fn on_epoch_counts(&mut self, _c: &EpochCounts) {}
    /// Asked before and after every step: true stops the run with a checkpoint (the answer to
    /// SIGTERM). A process on its own stops after the step; data-parallel ranks pass the
    /// request through the step's all-reduce and all stop after the same step.
    fn stop_requested(&self) -> bool {
        false
    }
    /// Asked before every step: true ends `fit` there with a collective error, as a broken ring
    /// would (the coordinator is re-forming the group). A replica alone in its group has no
    /// collective to break, so this is how it learns that a worker joins.
    fn regroup_requested(&self) -> bool {
        false
    }
}

/// An observer that does nothing (tests, library use).
pub struct Quiet;
impl TrainObserver for Quiet {}
