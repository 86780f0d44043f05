//! `steps.jsonl`: the loss curve between epochs. `metrics.jsonl` has one line per epoch, so a
//! short run, or the first hours of a long one, had no curve at all; this file gets one line
//! every `every` steps (means over those steps) and a last one for the steps left over when
//! the run ends, so even a `--max-steps 5` run has its points.
//!
//! A resumed run first drops the lines past the step it resumes from (they describe steps the
//! crash lost and the resumed run trains again), so the file reads as one run.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::records::StepStats;

/// File name in a run directory.
pub const STEP_LOG: &str = "steps.jsonl";

/// Default interval of `--step-metrics-every`.
pub const DEFAULT_STEP_METRICS_EVERY: usize = 10;

/// One line of `steps.jsonl`: the steps since the previous line, ending at `step`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Last global step of the interval (1-based count of steps done).
    pub step: usize,
    /// Epoch of that step (1-based).
    pub epoch: usize,
    /// Steps the means are over.
    pub steps: usize,
    /// Mean training loss of the finite steps (None: none was finite).
    pub loss: Option<f64>,
    /// Learning rate of the last step (None where unknown: the coordinator's heartbeat lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Images per second over the interval (this process's, all phases included).
    pub images_per_sec: f64,
    /// Mean seconds per step of each phase: data, forward, backward, all-reduce, optimizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_s: Option<[f64; 5]>,
    /// Data parallel: mean seconds per step the collective spent on the gradients, hidden
    /// behind the backward pass or not (the all-reduce phase above is the exposed part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub communication_s: Option<f64>,
    /// Seconds since the Unix epoch when the line was written.
    pub unix_time: f64,
}

/// Sums over the steps of the interval in progress.
#[derive(Debug, Default)]
struct Interval {
    steps: usize,
    finite: usize,
    loss: f64,
    images: usize,
    phases: [f64; 5],
    communication: f64,
    last: Option<(usize, usize, f64)>,
}

/// Appends [`StepRecord`]s to a run's `steps.jsonl`. Writing is best effort: a failure is
/// logged once and the run goes on (the checkpoints, not this file, are what must not be lost).
#[derive(Debug)]
pub struct StepLog {
    path: PathBuf,
    every: usize,
    acc: Interval,
    failed: bool,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl StepLog {
    /// Opens `dir/steps.jsonl` for a run at `step` (0 for a fresh run), dropping lines past it;
    /// `every` 0 still writes the last line only.
    pub fn open(dir: &Path, every: usize, step: usize) -> Self {
        let path = dir.join(STEP_LOG);
        let mut log = Self {
            path,
            every,
            acc: Interval::default(),
            failed: false,
        };
        if let Err(e) = log.truncate_after(step) {
            log.warn(&e);
        }
        log
    }

    fn warn(&mut self, e: &std::io::Error) {
        if !self.failed {
            tracing::warn!(file = %self.path.display(), error = %e, "cannot write the step metrics (training goes on; later failures are not logged)");
        }
        self.failed = true;
    }

    fn truncate_after(&self, step: usize) -> std::io::Result<()> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let keep = |l: &&str| serde_json::from_str::<StepRecord>(l).is_ok_and(|r| r.step <= step);
        let kept: Vec<&str> = text.lines().filter(keep).collect();
        if kept.len() == text.lines().count() {
            return Ok(());
        }
        let mut out = kept.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        let tmp = self.path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, out)?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Adds one step; writes a line when the step is a multiple of `every`.
    pub fn record(&mut self, s: &StepStats) {
        let a = &mut self.acc;
        a.steps += 1;
        if s.loss.is_finite() {
            a.finite += 1;
            a.loss += s.loss;
        }
        a.images += s.images;
        let t = &s.timing;
        for (sum, v) in
            a.phases
                .iter_mut()
                .zip([t.data, t.forward, t.backward, t.allreduce, t.optimizer])
        {
            *sum += v;
        }
        a.communication += t.communication;
        a.last = Some((s.step, s.epoch + 1, s.lr));
        if self.every > 0 && s.step.is_multiple_of(self.every) {
            self.flush();
        }
    }

    /// Writes the interval in progress, if it has any step.
    pub fn flush(&mut self) {
        let a = std::mem::take(&mut self.acc);
        let Some((step, epoch, lr)) = a.last else {
            return;
        };
        let n = a.steps as f64;
        let total: f64 = a.phases.iter().sum();
        let r = StepRecord {
            step,
            epoch,
            steps: a.steps,
            loss: (a.finite > 0).then(|| a.loss / a.finite as f64),
            lr: Some(lr),
            images_per_sec: a.images as f64 / total.max(1e-9),
            phase_s: Some(a.phases.map(|p| p / n)),
            communication_s: (a.communication > 0.0).then(|| a.communication / n),
            unix_time: now(),
        };
        if let Err(e) = append(&self.path, &r) {
            self.warn(&e);
        }
    }
}

impl Drop for StepLog {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Appends one record to `path` (created if missing).
pub fn append(path: &Path, r: &StepRecord) -> std::io::Result<()> {
    let line = serde_json::to_string(r).map_err(std::io::Error::other)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{line}")
}

/// A heartbeat's line (the coordinator's log of rank 0's progress: no LR or phase times).
pub fn heartbeat_record(step: usize, epoch: usize, loss: f64, images_per_sec: f64) -> StepRecord {
    StepRecord {
        step,
        epoch,
        steps: 1,
        loss: loss.is_finite().then_some(loss),
        lr: None,
        images_per_sec,
        phase_s: None,
        communication_s: None,
        unix_time: now(),
    }
}

/// Drops the lines of `dir/steps.jsonl` past `step` (a resumed coordinator).
pub fn truncate_after(dir: &Path, step: usize) -> std::io::Result<()> {
    StepLog {
        path: dir.join(STEP_LOG),
        every: 0,
        acc: Interval::default(),
        failed: true,
    }
    .truncate_after(step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::StepTiming;

    fn stats(step: usize, loss: f64) -> StepStats {
        StepStats {
            epoch: (step - 1) / 4,
            step,
            batch: (step - 1) % 4,
            steps_per_epoch: 4,
            loss,
            epoch_accuracy: 0.5,
            lr: 0.1 / step as f64,
            images: 8,
            timing: StepTiming {
                data: 0.01,
                forward: 0.1,
                backward: 0.2,
                allreduce: 0.0,
                optimizer: 0.09,
                communication: 0.0,
            },
            allreduce_bytes: 0,
            allreduce_saved_bytes: 0,
            world: 1,
        }
    }

    fn lines(dir: &Path) -> Vec<StepRecord> {
        std::fs::read_to_string(dir.join(STEP_LOG))
            .expect("steps.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a record"))
            .collect()
    }

    #[test]
    fn one_line_per_interval_with_means_and_a_last_line_for_the_rest() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut log = StepLog::open(dir.path(), 3, 0);
            for (step, loss) in [(1, 3.0), (2, 2.0), (3, f64::NAN), (4, 1.0), (5, 0.5)] {
                log.record(&stats(step, loss));
            }
        }
        let l = lines(dir.path());
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!((l[0].step, l[0].steps, l[0].epoch), (3, 3, 1));
        assert_eq!(l[0].loss, Some(2.5), "the NaN step is left out of the mean");
        assert_eq!(l[0].lr, Some(0.1 / 3.0));
        assert!(
            (l[0].images_per_sec - 20.0).abs() < 1e-9,
            "{}",
            l[0].images_per_sec
        );
        let p = l[0].phase_s.expect("phases");
        assert!((p[2] - 0.2).abs() < 1e-12);
        assert_eq!((l[1].step, l[1].steps, l[1].epoch), (5, 2, 2));
        assert_eq!(l[1].loss, Some(0.75));
    }

    #[test]
    fn a_resumed_run_drops_the_lines_past_its_step_and_continues_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut log = StepLog::open(dir.path(), 2, 0);
            for step in 1..=7 {
                log.record(&stats(step, 1.0));
            }
        }
        assert_eq!(
            lines(dir.path()).iter().map(|r| r.step).collect::<Vec<_>>(),
            [2, 4, 6, 7]
        );
        {
            let mut log = StepLog::open(dir.path(), 2, 4);
            for step in 5..=6 {
                log.record(&stats(step, 1.0));
            }
        }
        assert_eq!(
            lines(dir.path()).iter().map(|r| r.step).collect::<Vec<_>>(),
            [2, 4, 6]
        );
        truncate_after(dir.path(), 2).expect("truncate");
        assert_eq!(lines(dir.path()).len(), 1);
    }

    #[test]
    fn heartbeat_lines_have_no_lr_and_read_back() {
        let r = heartbeat_record(12, 2, f64::NAN, 100.0);
        let text = serde_json::to_string(&r).expect("json");
        assert!(!text.contains("lr") && !text.contains("phase_s"), "{text}");
        let back: StepRecord = serde_json::from_str(&text).expect("read back");
        assert_eq!(back.loss, None);
        assert_eq!(back.step, 12);
    }
}
