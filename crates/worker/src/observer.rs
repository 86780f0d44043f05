//! Forwards training progress to the coordinator: epoch counts synchronously, step progress
//! through shared state that the heartbeat thread sends.

use std::sync::{Arc, Mutex};

use resnet_proto::{ControlPlane, EpochReport};
use resnet_train::{EpochCounts, EpochRecord, StepStats, TrainObserver};

use crate::heartbeat::Progress;

pub(crate) struct WorkerObserver<'a> {
    pub control: &'a mut dyn ControlPlane,
    pub worker_id: String,
    pub rank: usize,
    pub generation: u64,
    pub progress: Arc<Mutex<Progress>>,
    pub error: Option<resnet_proto::ControlError>,
    pub last_log: std::time::Instant,
    /// Sums of the phase timings, for the final breakdown.
    pub timing: resnet_train::StepTiming,
    /// Steps summed in `timing`.
    pub steps: usize,
    /// Prometheus series of this worker.
    pub metrics: crate::metrics::WorkerMetrics,
    /// Sends checkpoints to the coordinator (rank 0 of a run with central checkpoints).
    pub uploader: Option<crate::upload::Uploader>,
    /// The coordinator asked the run to stop (a heartbeat reply said so), or this worker left
    /// the group (a signal; a worker on its own then stops at the step boundary).
    pub signals: crate::heartbeat::Signals,
}

impl WorkerObserver<'_> {
    /// Logs the mean time of each step phase over this worker's run.
    pub fn log_breakdown(&self) {
        let n = self.steps.max(1) as f64;
        let t = &self.timing;
        tracing::info!(
            rank = self.rank,
            steps = self.steps,
            "mean step {:.4}s: data {:.4}s forward {:.4}s backward {:.4}s all-reduce {:.4}s optimizer {:.4}s; communication {:.4}s (the all-reduce phase is its exposed part)",
            t.total() / n,
            t.data / n,
            t.forward / n,
            t.backward / n,
            t.allreduce / n,
            t.optimizer / n,
            t.communication / n
        );
    }
}

impl TrainObserver for WorkerObserver<'_> {
    fn regroup_requested(&self) -> bool {
        self.signals
            .regroup
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    fn stop_requested(&self) -> bool {
        self.signals
            .asked_to_stop
            .load(std::sync::atomic::Ordering::Relaxed)
            || self.signals.has_left()
    }

    fn on_start(&mut self, spe: usize, last: usize, start: usize) {
        tracing::info!(
            rank = self.rank,
            steps_per_epoch = spe,
            first_step = start + 1,
            last_step = last,
            "training"
        );
    }

    fn on_step(&mut self, s: &StepStats) {
        self.metrics.step(s);
        let ips = s.images as f64 / s.timing.total().max(1e-9);
        // The first step of a run pays one-off costs (allocation, the initial broadcast).
        if s.step > 1 {
            let (a, b) = (&mut self.timing, &s.timing);
            a.data += b.data;
            a.forward += b.forward;
            a.backward += b.backward;
            a.allreduce += b.allreduce;
            a.optimizer += b.optimizer;
            a.communication += b.communication;
            self.steps += 1;
        }
        *self.progress.lock().unwrap_or_else(|p| p.into_inner()) = Progress {
            step: s.step as u64,
            loss: s.loss,
            images_per_sec: ips,
        };
        if self.last_log.elapsed().as_secs() >= 10 || s.batch == 0 {
            let t = &s.timing;
            tracing::info!(
                rank = self.rank,
                epoch = s.epoch + 1,
                step = s.step,
                loss = format!("{:.4}", s.loss),
                lr = format!("{:.5}", s.lr),
                images_per_sec = format!("{ips:.0}"),
                "step (data {:.3}s forward {:.3}s backward {:.3}s all-reduce {:.3}s optimizer {:.3}s)",
                t.data,
                t.forward,
                t.backward,
                t.allreduce,
                t.optimizer
            );
            self.last_log = std::time::Instant::now();
        }
    }

    fn on_checkpoint(&mut self, dir: &std::path::Path, info: &resnet_train::CheckpointInfo) {
        self.metrics.checkpoint(info);
        tracing::info!(rank = self.rank, step = info.step, dir = %dir.display(), bytes = info.bytes, seconds = format!("{:.3}", info.seconds), "checkpoint written");
        if let Some(u) = &self.uploader {
            match crate::upload::read_dir_files(dir) {
                Ok(files) => u.submit(resnet_proto::CheckpointFiles {
                    worker_id: self.worker_id.clone(),
                    rank: self.rank,
                    generation: self.generation,
                    step: info.step as u64,
                    epoch: info.epoch as u32,
                    files,
                }),
                Err(e) => {
                    self.metrics.checkpoint_failed();
                    tracing::error!(dir = %dir.display(), error = %e, "cannot read the checkpoint back for upload");
                }
            }
        }
    }

    fn on_checkpoint_failed(&mut self, _error: &str) {
        self.metrics.checkpoint_failed();
    }

    fn on_epoch(&mut self, e: &EpochRecord) {
        tracing::info!(
            rank = self.rank,
            epoch = e.epoch,
            step = e.step,
            train_loss = format!("{:.4}", e.train_loss),
            "epoch done"
        );
    }

    fn on_epoch_counts(&mut self, c: &EpochCounts) {
        let (k, confusion, top5, loss) = match &c.eval {
            Some(ev) => (
                ev.confusion.len(),
                ev.confusion.iter().flatten().copied().collect(),
                ev.top5_correct,
                ev.loss_sum,
            ),
            None => (0, Vec::new(), 0, 0.0),
        };
        let report = EpochReport {
            worker_id: self.worker_id.clone(),
            rank: self.rank,
            generation: self.generation,
            epoch: c.epoch as u32,
            step: c.step as u64,
            train_loss_sum: c.train_loss_sum,
            train_correct: c.train_correct,
            train_seen: c.train_seen,
            train_seconds: c.seconds,
            lr: c.lr,
            num_classes: k,
            confusion,
            top5_correct: top5,
            eval_loss_sum: loss,
            complete: c.complete,
        };
        if let Err(e) = self.control.report_epoch(report) {
            tracing::error!(rank = self.rank, error = %e, "cannot report epoch");
            self.error.get_or_insert(e);
        }
    }
}
