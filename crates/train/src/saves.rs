//! What happens when a checkpoint cannot be written (full or read-only disk, a lost mount).
//!
//! A failed write is retried once after a short pause (a network filesystem's hiccup), then
//! recorded: the observer hears of it, `summary.json` lists it, and training goes on because the
//! write is atomic and earlier checkpoints are intact. But a run must not train on for hours with
//! nothing saved: after `limit` checkpoints in a row have failed the run stops with
//! [`TrainError::CheckpointLost`] (its own exit code in the binaries), and the final checkpoint
//! failing always does.

use std::path::Path;
use std::time::Duration;

use crate::checkpoint::list_checkpoints;
use crate::{FailedSave, TrainError};

/// Consecutive failed checkpoints after which `resnet train` stops (`--max-checkpoint-failures`).
pub const DEFAULT_MAX_CHECKPOINT_FAILURES: usize = 3;

/// Attempts per checkpoint (the first and one retry).
pub(crate) const SAVE_ATTEMPTS: usize = 2;

/// Pause before the retry.
pub(crate) const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The failed checkpoints of this process and the stop rule.
#[derive(Debug, Clone, Default)]
pub(crate) struct SaveLog {
    /// Every failed checkpoint, oldest first.
    pub failed: Vec<FailedSave>,
    /// Failures since the last checkpoint that was written.
    consecutive: usize,
    /// Stop after this many in a row; 0 never stops (the final checkpoint still must succeed).
    pub limit: usize,
}

impl SaveLog {
    /// Records a checkpoint that was written.
    pub fn saved(&mut self) {
        self.consecutive = 0;
    }

    /// Records a checkpoint that failed; an error when the run must stop.
    pub fn failed(&mut self, step: usize, error: String, root: &Path) -> Result<(), TrainError> {
        self.consecutive += 1;
        self.failed.push(FailedSave {
            step,
            error: error.clone(),
        });
        if self.limit > 0 && self.consecutive >= self.limit {
            return Err(lost(
                step,
                error,
                format!(
                    "{} checkpoints in a row could not be written",
                    self.consecutive
                ),
                root,
            ));
        }
        Ok(())
    }
}

/// The error for checkpoints that stopped the run: `why` is the rule, `error` the last cause;
/// it names the newest checkpoint left in `root`.
pub(crate) fn lost(step: usize, error: String, why: String, root: &Path) -> TrainError {
    let newest = list_checkpoints(root).first().map_or_else(
        || format!("none in {}", root.display()),
        |p| p.display().to_string(),
    );
    TrainError::CheckpointLost {
        step,
        error,
        why,
        newest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_after_the_limit_in_a_row_and_a_success_resets_the_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = SaveLog {
            limit: 2,
            ..SaveLog::default()
        };
        log.failed(10, "disk full".into(), dir.path())
            .expect("first failure goes on");
        log.saved();
        log.failed(30, "disk full".into(), dir.path())
            .expect("count was reset");
        let e = log
            .failed(40, "No space left on device".into(), dir.path())
            .expect_err("second in a row stops");
        let text = e.to_string();
        assert!(text.contains("step 40"), "{text}");
        assert!(text.contains("2 checkpoints in a row"), "{text}");
        assert!(text.contains("No space left on device"), "{text}");
        assert!(text.contains("none in"), "{text}");
        assert_eq!(log.failed.len(), 3, "every failure is listed");
    }

    #[test]
    fn a_limit_of_zero_never_stops_and_names_the_newest_checkpoint_when_it_must() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("step-00000004")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("step-00000002")).expect("mkdir");
        let mut log = SaveLog::default();
        for step in 1..100 {
            log.failed(step, "x".into(), dir.path())
                .expect("limit 0 never stops");
        }
        let e = lost(6, "x".into(), "the final checkpoint".into(), dir.path());
        assert!(e.to_string().contains("step-00000004"), "{e}");
    }
}
