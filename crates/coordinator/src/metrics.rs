//! The coordinator's Prometheus series: names in one place, updated at the events of
//! [`Coordinator`](crate::Coordinator) and the gRPC service. No labels beyond `event`,
//! `phase`, `method` and `code`, all from small fixed sets.

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};

use crate::phase::Phase;
use crate::summary::ClusterEpoch;

/// Workers the run needs (`--workers`).
pub const WORKERS_REQUIRED: &str = "resnet_cluster_workers_required";
/// Workers joined and heard from within the heartbeat timeout.
pub const WORKERS_ALIVE: &str = "resnet_cluster_workers_alive";
/// Group generation (bumped every time the group is formed).
pub const GENERATION: &str = "resnet_cluster_generation";
/// Membership changes: `event` = joined, left, lost, finished.
pub const MEMBERSHIP_EVENTS_TOTAL: &str = "resnet_cluster_membership_events_total";
/// Heartbeats received.
pub const HEARTBEATS_TOTAL: &str = "resnet_cluster_heartbeats_total";
/// Expected heartbeats that did not arrive (one per interval of silence past the first).
pub const HEARTBEAT_MISSES_TOTAL: &str = "resnet_cluster_heartbeat_misses_total";
/// 1 for the run's current phase (`phase` = waiting, running, finished, failed), 0 otherwise.
pub const RUN_PHASE: &str = "resnet_cluster_run_phase";
/// Slowest rank's global step, from heartbeats.
pub const RUN_STEP: &str = "resnet_cluster_run_step";
/// Epochs every rank has reported.
pub const RUN_EPOCHS_COMPLETED: &str = "resnet_cluster_run_epochs_completed";
/// Mean training loss of the last cluster epoch (all ranks' images).
pub const RUN_TRAIN_LOSS: &str = "resnet_cluster_run_train_loss";
/// Training accuracy of the last cluster epoch.
pub const RUN_TRAIN_ACCURACY_RATIO: &str = "resnet_cluster_run_train_accuracy_ratio";
/// Cluster images per second over the last epoch (slowest rank's time).
pub const RUN_IMAGES_PER_SECOND: &str = "resnet_cluster_run_images_per_second";
/// Test accuracy after the last epoch, from every rank's exact counts.
pub const EVAL_ACCURACY_RATIO: &str = "resnet_cluster_eval_accuracy_ratio";
/// Test top-5 accuracy after the last epoch.
pub const EVAL_TOP5_ACCURACY_RATIO: &str = "resnet_cluster_eval_top5_accuracy_ratio";
/// Mean test cross-entropy after the last epoch.
pub const EVAL_LOSS: &str = "resnet_cluster_eval_loss";
/// Histogram of central checkpoint writes (`store="coordinator"`).
pub const CHECKPOINT_DURATION_SECONDS: &str = "resnet_cluster_checkpoint_duration_seconds";
/// Size of the last stored checkpoint.
pub const CHECKPOINT_SIZE_BYTES: &str = "resnet_cluster_checkpoint_size_bytes";
/// Unix time of the last stored checkpoint.
pub const CHECKPOINT_LAST_SUCCESS: &str =
    "resnet_cluster_checkpoint_last_success_timestamp_seconds";
/// Uploads that could not be stored.
pub const CHECKPOINT_FAILURES_TOTAL: &str = "resnet_cluster_checkpoint_failures_total";
/// Groups formed with some but not all ranks able to use NCCL (they fall back to the TCP ring).
pub const COLLECTIVE_FALLBACKS: &str = "resnet_cluster_collective_fallbacks_total";
/// gRPC requests: `method`, `code` (gRPC status name).
pub const GRPC_REQUESTS_TOTAL: &str = "resnet_cluster_grpc_requests_total";
/// Histogram of gRPC handling time by `method` (Join includes the rendezvous wait).
pub const GRPC_REQUEST_DURATION_SECONDS: &str = "resnet_cluster_grpc_request_duration_seconds";

/// Registers help texts and the series that must exist from the start.
pub(crate) fn init(workers: usize) {
    describe_gauge!(WORKERS_REQUIRED, "Workers the run needs.");
    describe_gauge!(
        WORKERS_ALIVE,
        "Workers in the group and heard from recently."
    );
    describe_gauge!(GENERATION, "Group generation.");
    describe_counter!(MEMBERSHIP_EVENTS_TOTAL, "Membership changes by event.");
    describe_counter!(HEARTBEATS_TOTAL, "Heartbeats received.");
    describe_counter!(
        HEARTBEAT_MISSES_TOTAL,
        "Heartbeat intervals that passed in silence."
    );
    describe_gauge!(RUN_PHASE, "1 for the run's current phase.");
    describe_gauge!(RUN_STEP, "Slowest rank's global step.");
    describe_gauge!(RUN_EPOCHS_COMPLETED, "Epochs reported by every rank.");
    describe_gauge!(
        RUN_TRAIN_LOSS,
        "Training loss of the last epoch over all ranks."
    );
    describe_gauge!(
        RUN_TRAIN_ACCURACY_RATIO,
        "Training accuracy of the last epoch over all ranks."
    );
    describe_gauge!(
        RUN_IMAGES_PER_SECOND,
        "Cluster training throughput of the last epoch."
    );
    describe_gauge!(EVAL_ACCURACY_RATIO, "Test accuracy after the last epoch.");
    describe_gauge!(
        EVAL_TOP5_ACCURACY_RATIO,
        "Test top-5 accuracy after the last epoch."
    );
    describe_gauge!(EVAL_LOSS, "Test loss after the last epoch.");
    describe_counter!(
        COLLECTIVE_FALLBACKS,
        "Groups of CUDA and non-CUDA (or NCCL-less) ranks that all-reduce over the TCP ring."
    );
    describe_counter!(
        GRPC_REQUESTS_TOTAL,
        "gRPC requests by method and status code."
    );
    describe_histogram!(
        GRPC_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "gRPC request handling time."
    );
    gauge!(WORKERS_REQUIRED).set(workers as f64);
    gauge!(WORKERS_ALIVE).set(0.0);
    gauge!(GENERATION).set(0.0);
    counter!(HEARTBEATS_TOTAL).increment(0);
    counter!(HEARTBEAT_MISSES_TOTAL).increment(0);
    for e in ["joined", "left", "lost", "finished"] {
        counter!(MEMBERSHIP_EVENTS_TOTAL, "event" => e).increment(0);
    }
    phase(Phase::Waiting);
}

pub(crate) fn phase(p: Phase) {
    for (name, q) in [
        ("waiting", Phase::Waiting),
        ("running", Phase::Running),
        ("finished", Phase::Finished),
        ("failed", Phase::Failed),
    ] {
        gauge!(RUN_PHASE, "phase" => name).set(if p == q { 1.0 } else { 0.0 });
    }
}

pub(crate) fn membership(event: &'static str) {
    counter!(MEMBERSHIP_EVENTS_TOTAL, "event" => event).increment(1);
}

pub(crate) fn epoch(e: &ClusterEpoch, completed: usize) {
    gauge!(RUN_EPOCHS_COMPLETED).set(completed as f64);
    gauge!(RUN_TRAIN_LOSS).set(e.train_loss);
    gauge!(RUN_TRAIN_ACCURACY_RATIO).set(e.train_accuracy);
    gauge!(RUN_IMAGES_PER_SECOND).set(e.images_per_sec);
    if let Some(t) = &e.test {
        gauge!(EVAL_ACCURACY_RATIO).set(t.accuracy);
        gauge!(EVAL_TOP5_ACCURACY_RATIO).set(t.top5);
        gauge!(EVAL_LOSS).set(t.loss);
    }
}

pub(crate) fn checkpoint_stored(s: &crate::store::Stored) {
    histogram!(CHECKPOINT_DURATION_SECONDS, "store" => "coordinator").record(s.seconds);
    gauge!(CHECKPOINT_SIZE_BYTES, "store" => "coordinator").set(s.bytes as f64);
    gauge!(CHECKPOINT_LAST_SUCCESS, "store" => "coordinator").set(unix_now());
}

/// The store's series exist from the start: 0 failures, and the age clock starts now.
pub(crate) fn checkpoint_init() {
    counter!(CHECKPOINT_FAILURES_TOTAL, "store" => "coordinator").increment(0);
    gauge!(CHECKPOINT_LAST_SUCCESS, "store" => "coordinator").set(unix_now());
}

pub(crate) fn checkpoint_failed() {
    counter!(CHECKPOINT_FAILURES_TOTAL, "store" => "coordinator").increment(1);
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Counts one handled request.
pub(crate) fn grpc(method: &'static str, code: tonic::Code, seconds: f64) {
    counter!(GRPC_REQUESTS_TOTAL, "method" => method, "code" => code_name(code)).increment(1);
    histogram!(GRPC_REQUEST_DURATION_SECONDS, "method" => method).record(seconds);
}

/// gRPC's canonical upper-snake status names (what grpc-go and Envoy put in metrics).
fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match c {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}
