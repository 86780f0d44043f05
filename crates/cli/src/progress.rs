//! Progress output: a bar per epoch on a terminal, plain lines otherwise (logs, CI).

use std::io::IsTerminal;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use resnet_train::{EpochRecord, StepStats, TrainObserver};

/// Draws training progress.
pub struct Progress {
    bar: Option<ProgressBar>,
    tty: bool,
    last_line: std::time::Instant,
    smoothed_ips: f64,
    /// Set by a signal handler: the run stops at the next step boundary.
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// The run's steps.jsonl (its last line is written when this is dropped).
    steps: Option<resnet_train::StepLog>,
}

impl Progress {
    /// A reporter that draws bars only when stderr is a terminal.
    pub fn new() -> Self {
        Self {
            bar: None,
            // Bars only for a person at a terminal, never between JSON log lines.
            tty: std::io::stderr().is_terminal() && !crate::json_logs(),
            last_line: std::time::Instant::now(),
            smoothed_ips: 0.0,
            stop: None,
            steps: None,
        }
    }

    fn bar_for(&mut self, s: &StepStats) -> &ProgressBar {
        self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(s.steps_per_epoch as u64);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(format!("epoch {}", s.epoch + 1));
            bar.set_position(s.batch as u64);
            bar
        })
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// Stops the run at the next step boundary once `flag` is set.
    pub fn with_stop(mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.stop = Some(flag);
        self
    }

    /// Records every step in `log`.
    pub fn with_step_log(mut self, log: resnet_train::StepLog) -> Self {
        self.steps = Some(log);
        self
    }
}

impl TrainObserver for Progress {
    fn stop_requested(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn on_start(&mut self, spe: usize, last: usize, start: usize) {
        crate::say!(
            "training: {spe} steps per epoch, steps {}..{last}",
            start + 1
        );
    }

    fn on_step(&mut self, s: &StepStats) {
        if let Some(log) = &mut self.steps {
            log.record(s);
        }
        let ips = s.images as f64 / s.timing.total().max(1e-9);
        self.smoothed_ips = if self.smoothed_ips == 0.0 {
            ips
        } else {
            0.9 * self.smoothed_ips + 0.1 * ips
        };
        let msg = format!(
            "step {} loss {:.4} acc {:.3} lr {:.4} {:.0} img/s",
            s.step, s.loss, s.epoch_accuracy, s.lr, self.smoothed_ips
        );
        if self.tty {
            let bar = self.bar_for(s);
            bar.set_position(s.batch as u64 + 1);
            bar.set_message(msg);
        } else if self.last_line.elapsed().as_secs_f64() > 10.0 || s.batch == 0 {
            crate::say!(
                "epoch {} {}/{} {msg}",
                s.epoch + 1,
                s.batch + 1,
                s.steps_per_epoch
            );
            self.last_line = std::time::Instant::now();
        }
    }

    fn on_epoch(&mut self, e: &EpochRecord) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let test = e
            .test
            .as_ref()
            .map(|t| {
                format!(
                    " | test acc {:.4} top5 {:.4} loss {:.4}",
                    t.accuracy, t.top5, t.loss
                )
            })
            .unwrap_or_default();
        crate::say!(
            "epoch {:>3} step {:>6} | train loss {:.4} acc {:.4} | lr {:.5} | {:.0} img/s {:.1}s{test}",
            e.epoch, e.step, e.train_loss, e.train_accuracy, e.lr, e.images_per_sec, e.seconds
        );
    }

    fn on_checkpoint(&mut self, dir: &Path, info: &resnet_train::CheckpointInfo) {
        let line = format!(
            "checkpoint {} ({:.1} MB in {:.2}s)",
            dir.display(),
            info.bytes as f64 / 1e6,
            info.seconds
        );
        self.print(&line);
    }

    fn on_checkpoint_failed(&mut self, error: &str) {
        self.print(&format!(
            "CHECKPOINT FAILED (training continues; earlier checkpoints are intact): {error}"
        ));
    }
}

impl Progress {
    /// A line that does not tear the progress bar.
    fn print(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| crate::say!("{line}")),
            None => crate::say!("{line}"),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
