//! Turning the ranks' exact counts into the cluster's epoch records and run summary.

use resnet_proto::EpochReport;
use resnet_spec::{EvalCounts, EvalReport};
use serde::{Deserialize, Serialize};

/// One epoch of the whole cluster (all ranks' counts summed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterEpoch {
    /// 1-based epoch.
    pub epoch: u32,
    /// Global step at its end.
    pub step: u64,
    /// False for the partial epoch of a run stopped by `max_steps`.
    pub complete: bool,
    /// Mean training loss over every rank's images.
    pub train_loss: f64,
    /// Training accuracy over every rank's images.
    pub train_accuracy: f64,
    /// LR of the last step.
    pub lr: f64,
    /// Training images per second of the whole cluster (slowest rank's time).
    pub images_per_sec: f64,
    /// Evaluation over the whole test split, from exact counts.
    pub test: Option<EvalReport>,
}

/// Sums the reports of all ranks for one epoch. `classes` names the confusion rows.
pub fn merge_epoch(reports: &[EpochReport], complete: bool, classes: &[String]) -> ClusterEpoch {
    let seen: u64 = reports.iter().map(|r| r.train_seen).sum();
    let correct: u64 = reports.iter().map(|r| r.train_correct).sum();
    let loss: f64 = reports.iter().map(|r| r.train_loss_sum).sum();
    let slowest = reports.iter().map(|r| r.train_seconds).fold(0.0, f64::max);
    let k = reports.first().map_or(0, |r| r.num_classes);
    let test = reports
        .iter()
        .all(|r| k > 0 && k.checked_mul(k) == Some(r.confusion.len()))
        .then(|| {
            let mut total = EvalCounts::new(k);
            for r in reports {
                let counts = EvalCounts {
                    confusion: r.confusion.chunks(k).map(|row| row.to_vec()).collect(),
                    top5_correct: r.top5_correct,
                    loss_sum: r.eval_loss_sum,
                };
                total.merge(&counts);
            }
            total.report(classes)
        });
    let first = &reports[0];
    ClusterEpoch {
        epoch: first.epoch,
        step: reports.iter().map(|r| r.step).max().unwrap_or(0),
        complete,
        train_loss: loss / seen.max(1) as f64,
        train_accuracy: correct as f64 / seen.max(1) as f64,
        lr: first.lr,
        images_per_sec: seen as f64 / slowest.max(1e-9),
        test,
    }
}

/// What the coordinator prints and writes when a run ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Number of workers.
    pub world: usize,
    /// Final group generation.
    pub generation: u64,
    /// Steps completed (every rank runs the same number).
    pub steps: u64,
    /// Epoch records.
    pub epochs: Vec<ClusterEpoch>,
    /// Each rank's final parameter hash, by rank.
    pub param_hashes: Vec<String>,
    /// True when every rank ended with bit-identical parameters and BatchNorm statistics.
    pub replicas_identical: bool,
    /// The last evaluation (accuracy etc. over the whole test split).
    pub final_eval: Option<EvalReport>,
    /// Every time the group was re-formed after losing workers.
    #[serde(default)]
    pub regroups: Vec<RegroupRecord>,
    /// Checkpoint uploads this coordinator could not store, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_checkpoints: Vec<resnet_spec::FailedSave>,
    /// Step of the newest checkpoint stored centrally (absent: none, or no `--out`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_step: Option<u64>,
    /// Stopped early on the operator's request (SIGTERM/SIGINT) with a checkpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

/// One re-forming of the group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegroupRecord {
    /// The new generation.
    pub generation: u64,
    /// Workers in the new group.
    pub world: usize,
    /// Workers dropped (their ids).
    pub lost: Vec<String>,
    /// Workers that joined the running job (elastic scale-up).
    #[serde(default)]
    pub joined: Vec<String>,
    /// The step the group continues from (the most advanced survivor's).
    pub resumed_step: u64,
    /// Highest step any worker had reported (heartbeats, rejoins) before the loss.
    pub highest_step_seen: u64,
    /// `highest_step_seen - resumed_step`, floored at 0: steps done by the lost workers only.
    pub steps_lost: u64,
}

pub(crate) fn write_lines(path: &std::path::Path, epochs: &[ClusterEpoch]) {
    let text: String = epochs
        .iter()
        .filter_map(|e| serde_json::to_string(e).ok())
        .map(|l| l + "\n")
        .collect();
    if let Err(e) = std::fs::write(path, text) {
        tracing::error!(path = %path.display(), error = %e, "cannot write metrics");
    }
}

pub(crate) fn read_lines(path: &std::path::Path) -> Vec<ClusterEpoch> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub(crate) fn write_json<T: serde::Serialize>(path: &std::path::Path, v: &T) {
    match serde_json::to_vec_pretty(v) {
        Ok(bytes) => {
            if let Err(e) = std::fs::write(path, bytes) {
                tracing::error!(path = %path.display(), error = %e, "cannot write summary");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot serialise summary"),
    }
}
