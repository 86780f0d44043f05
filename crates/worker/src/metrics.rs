//! The worker's Prometheus series: names in one place, handles built once per run.
//!
//! Labels are `rank`, `worker_id` and `device` (plus `phase` on the step breakdown): bounded by
//! the group size, so cardinality stays small.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Gauge, Histogram, Unit};
use resnet_train::{CheckpointInfo, StepStats};

/// Histogram of each step phase: `phase` = data, forward, backward, allreduce, optimizer.
pub const STEP_PHASE_SECONDS: &str = "resnet_cluster_step_phase_seconds";
/// Histogram of whole steps.
pub const STEP_DURATION_SECONDS: &str = "resnet_cluster_step_duration_seconds";
/// Training steps completed by this worker.
pub const STEPS_TOTAL: &str = "resnet_cluster_steps_total";
/// Global step of this worker's replica.
pub const STEP: &str = "resnet_cluster_step";
/// Epoch in progress (1-based).
pub const EPOCH: &str = "resnet_cluster_epoch";
/// Training images processed by this worker.
pub const TRAIN_IMAGES_TOTAL: &str = "resnet_cluster_train_images_total";
/// Images per second of the last step on this worker.
pub const IMAGES_PER_SECOND: &str = "resnet_cluster_images_per_second";
/// Training loss of the last batch.
pub const TRAIN_LOSS: &str = "resnet_cluster_train_loss";
/// Training accuracy over the epoch so far (this rank's shard).
pub const TRAIN_ACCURACY_RATIO: &str = "resnet_cluster_train_accuracy_ratio";
/// Learning rate of the last step.
pub const LEARNING_RATE: &str = "resnet_cluster_learning_rate";
/// Gradient bytes this rank all-reduced.
pub const ALLREDUCE_BYTES_TOTAL: &str = "resnet_cluster_allreduce_bytes_total";
/// Gradient bytes the bf16 wire (`--grad-wire bf16`) kept off the network against f32 on this
/// rank (0 on the f32 wire).
pub const ALLREDUCE_SAVED_BYTES_TOTAL: &str = "resnet_cluster_allreduce_saved_bytes_total";
/// Histogram of all-reduce durations: the collective's own time on a step's gradients,
/// overlapped with the backward pass or not.
pub const ALLREDUCE_DURATION_SECONDS: &str = "resnet_cluster_allreduce_duration_seconds";
/// Histogram of exposed communication: how long a step waited for its all-reduce after the
/// backward pass (all of it without overlap).
pub const ALLREDUCE_EXPOSED_SECONDS: &str = "resnet_cluster_allreduce_exposed_seconds";
/// Ring bus bandwidth of the last all-reduce: 2(n-1)/n x bytes / seconds (NCCL's definition).
pub const ALLREDUCE_BUS_BANDWIDTH: &str = "resnet_cluster_allreduce_bus_bandwidth_bytes_per_second";
/// Histogram of checkpoint write durations.
pub const CHECKPOINT_DURATION_SECONDS: &str = "resnet_cluster_checkpoint_duration_seconds";
/// Size of the last checkpoint.
pub const CHECKPOINT_SIZE_BYTES: &str = "resnet_cluster_checkpoint_size_bytes";
/// Unix time of the last successful checkpoint (age = time() - this).
pub const CHECKPOINT_LAST_SUCCESS: &str =
    "resnet_cluster_checkpoint_last_success_timestamp_seconds";
/// Checkpoint writes that failed (full or read-only disk).
pub const CHECKPOINT_FAILURES_TOTAL: &str = "resnet_cluster_checkpoint_failures_total";
/// Convolution passes this process ran on the gemm kernels although `--cuda-conv cudnn` asked
/// for cuDNN (cuDNN missing, or a shape it declined); 0 when cuDNN ran every pass or was not
/// asked for.
pub const CUDNN_FALLBACK_PASSES: &str = "resnet_cluster_cudnn_fallback_passes";

const PHASES: [&str; 5] = ["data", "forward", "backward", "allreduce", "optimizer"];

/// Handles for one worker's series.
pub struct WorkerMetrics {
    phases: [Histogram; 5],
    step_duration: Histogram,
    steps: Counter,
    step: Gauge,
    epoch: Gauge,
    images: Counter,
    images_per_second: Gauge,
    loss: Gauge,
    accuracy: Gauge,
    lr: Gauge,
    ar_bytes: Counter,
    ar_saved: Counter,
    ar_duration: Histogram,
    ar_exposed: Histogram,
    ar_busbw: Gauge,
    cudnn_fallbacks: Gauge,
    /// Only on the rank that writes checkpoints, so the age alert never sees the others.
    ckpt: Option<CheckpointSeries>,
}

struct CheckpointSeries {
    duration: Histogram,
    size: Gauge,
    last: Gauge,
    failures: Counter,
}

impl WorkerMetrics {
    /// Registers this worker's series (labels fixed for the run); `checkpoints`: whether this
    /// worker writes checkpoints.
    pub fn new(rank: usize, worker_id: &str, device: &str, checkpoints: bool) -> Self {
        describe();
        let l = [
            ("rank", rank.to_string()),
            ("worker_id", worker_id.to_string()),
            ("device", device.to_string()),
        ];
        let phases = PHASES.map(|p| {
            let mut labels = l.to_vec();
            labels.push(("phase", p.to_string()));
            histogram!(STEP_PHASE_SECONDS, &labels)
        });
        let m = Self {
            phases,
            step_duration: histogram!(STEP_DURATION_SECONDS, &l),
            steps: counter!(STEPS_TOTAL, &l),
            step: gauge!(STEP, &l),
            epoch: gauge!(EPOCH, &l),
            images: counter!(TRAIN_IMAGES_TOTAL, &l),
            images_per_second: gauge!(IMAGES_PER_SECOND, &l),
            loss: gauge!(TRAIN_LOSS, &l),
            accuracy: gauge!(TRAIN_ACCURACY_RATIO, &l),
            lr: gauge!(LEARNING_RATE, &l),
            ar_bytes: counter!(ALLREDUCE_BYTES_TOTAL, &l),
            ar_saved: counter!(ALLREDUCE_SAVED_BYTES_TOTAL, &l),
            ar_duration: histogram!(ALLREDUCE_DURATION_SECONDS, &l),
            ar_exposed: histogram!(ALLREDUCE_EXPOSED_SECONDS, &l),
            ar_busbw: gauge!(ALLREDUCE_BUS_BANDWIDTH, &l),
            cudnn_fallbacks: gauge!(CUDNN_FALLBACK_PASSES, &l),
            ckpt: checkpoints.then(|| CheckpointSeries {
                duration: histogram!(CHECKPOINT_DURATION_SECONDS, &l),
                size: gauge!(CHECKPOINT_SIZE_BYTES, &l),
                last: gauge!(CHECKPOINT_LAST_SUCCESS, &l),
                failures: counter!(CHECKPOINT_FAILURES_TOTAL, &l),
            }),
        };
        // Present from the start, so "no failures" is a 0 rather than a missing series.
        m.ar_bytes.increment(0);
        m.ar_saved.increment(0);
        m.cudnn_fallbacks.set(0.0);
        if let Some(c) = &m.ckpt {
            c.failures.increment(0);
            // The age clock starts with the run: "no checkpoint for an hour" counts from here.
            c.last.set(resnet_telemetry::unix_now());
        }
        m
    }

    /// Records one training step.
    pub fn step(&self, s: &StepStats) {
        let t = &s.timing;
        for (h, v) in
            self.phases
                .iter()
                .zip([t.data, t.forward, t.backward, t.allreduce, t.optimizer])
        {
            h.record(v);
        }
        let total = t.total().max(1e-9);
        self.step_duration.record(total);
        self.steps.increment(1);
        self.step.set(s.step as f64);
        self.epoch.set((s.epoch + 1) as f64);
        self.images.increment(s.images as u64);
        self.images_per_second.set(s.images as f64 / total);
        self.loss.set(s.loss);
        self.accuracy.set(s.epoch_accuracy);
        self.lr.set(s.lr);
        self.cudnn_fallbacks
            .set(resnet_kernels::cudnn::stats().fallbacks as f64);
        if s.allreduce_bytes > 0 {
            self.ar_bytes.increment(s.allreduce_bytes as u64);
            self.ar_saved.increment(s.allreduce_saved_bytes as u64);
            self.ar_duration.record(t.communication);
            self.ar_exposed.record(t.allreduce);
            let n = s.world as f64;
            let bus = 2.0 * (n - 1.0) / n * s.allreduce_bytes as f64 / t.communication.max(1e-9);
            self.ar_busbw.set(bus);
        }
    }

    /// Records a written checkpoint.
    pub fn checkpoint(&self, info: &CheckpointInfo) {
        if let Some(c) = &self.ckpt {
            c.duration.record(info.seconds);
            c.size.set(info.bytes as f64);
            c.last.set(resnet_telemetry::unix_now());
        }
    }

    /// The failure counter (for the upload thread), on the rank that checkpoints.
    pub fn checkpoint_failures(&self) -> Option<metrics::Counter> {
        self.ckpt.as_ref().map(|c| c.failures.clone())
    }

    /// Counts a failed checkpoint write.
    pub fn checkpoint_failed(&self) {
        if let Some(c) = &self.ckpt {
            c.failures.increment(1);
        }
    }
}

fn describe() {
    describe_histogram!(
        STEP_PHASE_SECONDS,
        Unit::Seconds,
        "Time in each phase of a training step."
    );
    describe_histogram!(
        STEP_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of a training step."
    );
    describe_counter!(STEPS_TOTAL, "Training steps completed.");
    describe_gauge!(STEP, "Global step of the replica.");
    describe_gauge!(EPOCH, "Epoch in progress (1-based).");
    describe_counter!(TRAIN_IMAGES_TOTAL, "Training images processed.");
    describe_gauge!(IMAGES_PER_SECOND, "Images per second of the last step.");
    describe_gauge!(TRAIN_LOSS, "Training loss of the last batch.");
    describe_gauge!(
        TRAIN_ACCURACY_RATIO,
        "Training accuracy over the epoch so far."
    );
    describe_gauge!(LEARNING_RATE, "Learning rate of the last step.");
    describe_gauge!(
        CUDNN_FALLBACK_PASSES,
        "Convolution passes run on the gemm kernels although cuDNN was asked for."
    );
    describe_counter!(
        ALLREDUCE_BYTES_TOTAL,
        Unit::Bytes,
        "Gradient bytes all-reduced (in the wire's element type)."
    );
    describe_counter!(
        ALLREDUCE_SAVED_BYTES_TOTAL,
        Unit::Bytes,
        "Gradient bytes the bf16 wire kept off the network against f32."
    );
    describe_histogram!(
        ALLREDUCE_DURATION_SECONDS,
        Unit::Seconds,
        "The collective's time on a step's gradients, overlapped with the backward or not."
    );
    describe_histogram!(
        ALLREDUCE_EXPOSED_SECONDS,
        Unit::Seconds,
        "How long a step waited for its gradient all-reduce after the backward pass."
    );
    describe_gauge!(
        ALLREDUCE_BUS_BANDWIDTH,
        "Bus bandwidth of the last all-reduce, 2(n-1)/n x bytes / seconds."
    );
    describe_histogram!(
        CHECKPOINT_DURATION_SECONDS,
        Unit::Seconds,
        "Time to write a checkpoint."
    );
    describe_gauge!(
        CHECKPOINT_SIZE_BYTES,
        Unit::Bytes,
        "Size of the last checkpoint."
    );
    describe_gauge!(
        CHECKPOINT_LAST_SUCCESS,
        Unit::Seconds,
        "Unix time of the last successful checkpoint."
    );
    describe_counter!(CHECKPOINT_FAILURES_TOTAL, "Checkpoint writes that failed.");
}
