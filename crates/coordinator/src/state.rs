//! The coordinator's state and its life cycle: configuration, members, phase, failure, stop
//! requests and liveness. Its logic is independent of gRPC so it can be driven in-process by
//! tests (the service layer only converts types) and is split by purpose over `impl
//! Coordinator` blocks: rendezvous in `join.rs`, regroups in `regroup.rs`, the workers' reports
//! in `reports.rs`, liveness decisions in `liveness.rs`, checkpoints in `checkpoints.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use resnet_proto::{EpochReport, Finish};
use resnet_spec::TrainConfig;
use tokio::sync::watch;

use crate::summary::{ClusterEpoch, RunSummary};

/// Why a request was refused; the service maps these to gRPC status codes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// Incompatible build or protocol (FAILED_PRECONDITION).
    #[error("{0}")]
    Incompatible(String),
    /// The run cannot take this worker now (FAILED_PRECONDITION / RESOURCE_EXHAUSTED).
    #[error("{0}")]
    NotJoinable(String),
    /// Unknown worker, wrong rank or stale generation (NOT_FOUND / FAILED_PRECONDITION).
    #[error("{0}")]
    Unknown(String),
    /// A malformed field (INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    /// Rendezvous did not complete in time (DEADLINE_EXCEEDED).
    #[error("{0}")]
    Timeout(String),
    /// The checkpoint store failed (INTERNAL): disk full, read-only, unreadable.
    #[error("{0}")]
    Storage(String),
}

pub use crate::phase::Phase;

/// Coordinator settings.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Workers the run needs.
    pub workers: usize,
    /// How long a joined worker waits for the rest of the group.
    pub join_timeout: Duration,
    /// Silence after which a training worker counts as dead.
    pub heartbeat_timeout: Duration,
    /// Fewest workers to continue with after losing some (the group is re-formed from the
    /// survivors when a central checkpoint store lets them heal); below it the run fails.
    pub min_workers: usize,
    /// Most workers the group may grow to by workers joining the running job (None:
    /// `workers`): one more is refused rather than silently growing the global batch.
    pub max_workers: Option<usize>,
    /// How long survivors have to rejoin when the group is re-formed.
    pub regroup_timeout: Duration,
    /// The run configuration every worker receives.
    pub run: TrainConfig,
    /// Where `metrics.jsonl`, `config.json` and `summary.json` go.
    pub out: Option<PathBuf>,
    /// The build fingerprint workers must match.
    pub fingerprint: String,
    /// A verified checkpoint directory to resume the run from (`--resume`); workers download it
    /// when they join. Its step and epoch come from its manifest.
    pub resume: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) worker_id: String,
    pub(crate) data_addr: String,
    pub(crate) device: String,
    /// The NCCL unique id this worker made when it joined (empty: none).
    pub(crate) nccl_id: Vec<u8>,
    pub(crate) last_seen: Instant,
    pub(crate) step: u64,
    pub(crate) loss: f64,
    pub(crate) images_per_sec: f64,
    /// Heartbeat misses already counted for the current silence.
    pub(crate) misses: u64,
}

#[derive(Default)]
pub(crate) struct Inner {
    pub(crate) members: Vec<Member>,
    pub(crate) generation: u64,
    pub(crate) reports: BTreeMap<u32, Vec<Option<EpochReport>>>,
    pub(crate) partial: BTreeMap<u32, Vec<Option<EpochReport>>>,
    pub(crate) epochs: Vec<ClusterEpoch>,
    pub(crate) finished: Vec<Option<Finish>>,
    pub(crate) summary: Option<RunSummary>,
    pub(crate) failure: Option<String>,
    /// Workers the current group has (`--workers` until a regroup shrinks it).
    pub(crate) world: usize,
    /// A re-forming of the group in progress.
    pub(crate) regroup: Option<crate::regroup::Regroup>,
    pub(crate) regroups: Vec<crate::summary::RegroupRecord>,
    /// Highest step any worker reported.
    pub(crate) highest_step: u64,
    /// Step of the newest checkpoint this coordinator stored.
    pub(crate) stored_step: Option<u64>,
    /// Uploads that could not be stored, oldest first.
    pub(crate) failed_stores: Vec<resnet_spec::FailedSave>,
    /// The operator asked the run to stop (SIGTERM): heartbeat replies tell the workers.
    pub(crate) stopping: bool,
    /// Last step written to `steps.jsonl` (from rank 0's heartbeats).
    pub(crate) step_logged: u64,
    /// Writing `steps.jsonl` failed once (logged once; the run goes on).
    pub(crate) step_log_failed: bool,
    /// The training diverged: (step, loss, the worker's message), from the first report.
    pub(crate) diverged: Option<(u64, f64, String)>,
}

/// The coordinator's state. Cheap to share (`Arc`).
pub struct Coordinator {
    pub(crate) cfg: CoordinatorConfig,
    /// Central checkpoints under `<out>/checkpoints` (None without `--out`).
    pub(crate) store: Option<Mutex<crate::store::CheckpointStore>>,
    /// (directory, step, epoch) of the checkpoint the run resumes from.
    pub(crate) resume: Option<(PathBuf, u64, u32)>,
    pub(crate) run_json: String,
    pub(crate) classes: Vec<String>,
    pub(crate) inner: Mutex<Inner>,
    pub(crate) phase: watch::Sender<Phase>,
    /// The current generation, for rejoining workers waiting on a regroup.
    pub(crate) generation_tx: watch::Sender<u64>,
    pub(crate) started: Instant,
}

fn class_names(cfg: &TrainConfig) -> Vec<String> {
    use resnet_data::DatasetKind as K;
    match cfg.data.dataset {
        K::Cifar10 => resnet_data::CIFAR10_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        K::Synthetic => resnet_data::SYNTHETIC_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        _ => (0..cfg.model.num_classes).map(|i| i.to_string()).collect(),
    }
}

impl Coordinator {
    /// A coordinator waiting for `cfg.workers` workers.
    pub fn new(cfg: CoordinatorConfig) -> Result<Self, String> {
        if cfg.workers == 0 {
            return Err("--workers must be at least 1".into());
        }
        if let Some(max) = cfg.max_workers.filter(|m| *m < cfg.workers) {
            return Err(format!(
                "--max-workers {max} is below --workers {}: the group could never form",
                cfg.workers
            ));
        }
        cfg.run.validate().map_err(|e| e.to_string())?;
        let run_json = serde_json::to_string(&cfg.run).map_err(|e| e.to_string())?;
        let (phase, _) = watch::channel(Phase::Waiting);
        crate::metrics::init(cfg.workers);
        let resume = match &cfg.resume {
            Some(dir) => {
                let m = resnet_spec::verify(dir).map_err(|e| e.to_string())?;
                Some((dir.clone(), m.step as u64, m.epoch as u32))
            }
            None => None,
        };
        // Uploads are held in memory until verified: no more than this run's checkpoints weigh.
        let max_bytes = resnet_spec::checkpoint_bytes_bound(&cfg.run)
            .map_err(|e| e.to_string())?
            .min(crate::store::MAX_UPLOAD_BYTES);
        let store = cfg.out.as_ref().map(|o| {
            Mutex::new(crate::store::CheckpointStore::new(
                crate::store::StoreConfig {
                    root: o.join("checkpoints"),
                    keep: cfg.run.keep_checkpoints,
                    max_bytes,
                },
            ))
        });
        if store.is_some() {
            crate::metrics::checkpoint_init();
        }
        let mut inner = Inner {
            world: cfg.workers,
            ..Inner::default()
        };
        // A resumed run continues the epoch records it had up to the checkpoint.
        if let (Some((_, step, _)), Some(out)) = (&resume, &cfg.out) {
            inner.epochs = crate::summary::read_lines(&out.join("metrics.jsonl"))
                .into_iter()
                .filter(|e| e.complete && e.step <= *step)
                .collect();
        }
        // steps.jsonl likewise (a fresh run starts it empty).
        if let Some(out) = &cfg.out {
            let step = resume.as_ref().map_or(0, |r| r.1);
            inner.step_logged = step;
            if let Err(e) = resnet_spec::step_log::truncate_after(out, step as usize) {
                tracing::warn!(error = %e, "cannot trim steps.jsonl to the resumed step");
            }
        }
        Ok(Self {
            classes: class_names(&cfg.run),
            cfg,
            store,
            resume,
            run_json,
            inner: Mutex::new(inner),
            phase,
            generation_tx: watch::channel(0).0,
            started: Instant::now(),
        })
    }

    pub(crate) fn set_phase(&self, p: Phase) {
        self.phase.send_replace(p);
        crate::metrics::phase(p);
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Waits until the run has finished or failed.
    pub async fn wait_finished(&self) {
        let mut rx = self.phase.subscribe();
        let _ = rx
            .wait_for(|p| matches!(p, Phase::Finished | Phase::Failed))
            .await;
    }

    /// Ends the run as failed with `reason` (logged; reported by [`failure`](Self::failure)).
    pub fn fail(&self, reason: String) {
        let mut inner = self.lock();
        if inner.failure.is_none() && self.phase() != Phase::Finished {
            tracing::error!(%reason, "run failed");
            inner.failure = Some(reason);
            self.set_phase(Phase::Failed);
        }
    }

    /// Where the training diverged (step, loss, message), when a worker said so: the run failed
    /// for that reason (the binary exits with the divergence code, not a generic failure).
    pub fn divergence(&self) -> Option<(u64, f64, String)> {
        self.lock().diverged.clone()
    }

    /// Asks the workers to stop at the next step boundary with a checkpoint (they learn it from
    /// their next heartbeat reply and agree on the step through the all-reduce). Before the
    /// group has formed there is nothing to save: the run fails at once. Returns whether the
    /// run was under way.
    pub fn request_stop(&self) -> bool {
        let mut inner = self.lock();
        inner.stopping = true;
        let running = self.phase() == Phase::Running;
        drop(inner);
        if !running && self.phase() != Phase::Finished {
            self.fail("stopped by a signal before the run started".into());
        }
        running
    }

    /// Why the run failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.lock().failure.clone()
    }

    /// Fails the run if the group is not complete within the join timeout of the coordinator's
    /// start. A training worker silent longer than the heartbeat timeout is dropped and the
    /// group re-formed without it (`start_regroup_for_silence`); only when that cannot be done
    /// does the run fail, naming the worker. The service calls this every second.
    pub fn check_liveness(&self) {
        self.check_liveness_at(Instant::now());
    }

    /// [`Self::check_liveness`] as of `now` (the decisions are `liveness`'s pure functions of
    /// it), so a test can look ahead in time instead of sleeping.
    pub fn check_liveness_at(&self, now: Instant) {
        if self.phase() == Phase::Waiting
            && crate::liveness::rendezvous_expired(self.started, now, self.cfg.join_timeout)
        {
            let joined = self.lock().members.len();
            self.fail(format!(
                "rendezvous timed out after {:?}: {joined} of {} workers joined",
                self.cfg.join_timeout, self.cfg.workers
            ));
            return;
        }
        if self.phase() != Phase::Running {
            return;
        }
        if self.regroup_due_at(now) {
            return;
        }
        let silent = {
            let mut inner = self.lock();
            for m in inner.members.iter_mut() {
                let missed = crate::liveness::missed_beats(
                    m.last_seen,
                    now,
                    resnet_proto::HEARTBEAT_INTERVAL,
                );
                if missed > m.misses {
                    metrics::counter!(crate::metrics::HEARTBEAT_MISSES_TOTAL)
                        .increment(missed - m.misses);
                    m.misses = missed;
                }
            }
            crate::liveness::silent_member(
                &inner.members,
                &inner.finished,
                now,
                self.cfg.heartbeat_timeout,
            )
            .map(|(_, reason)| reason)
        };
        if let Some(reason) = silent {
            if !self.start_regroup_for_silence(&reason) {
                crate::metrics::membership("lost");
                metrics::gauge!(crate::metrics::WORKERS_ALIVE).decrement(1.0);
                self.fail(reason);
            }
        }
    }

    /// The summary, once every worker finished.
    pub fn summary(&self) -> Option<RunSummary> {
        self.lock().summary.clone()
    }

    /// The run configuration every worker receives at join (JSON), for workers that warm up
    /// before joining.
    pub fn run_config_json(&self) -> String {
        self.run_json.clone()
    }
}
