//! Membership, rendezvous and progress: the coordinator's logic, independent of gRPC so it can
//! be driven in-process by tests. The service layer only converts types.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use resnet_proto::{Assignment, EpochReport, Finish, Heartbeat, JoinRequest, PROTOCOL_VERSION};
use resnet_train::TrainConfig;
use tokio::sync::watch;

use crate::summary::{merge_epoch, ClusterEpoch, RunSummary};

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

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for workers to join.
    Waiting,
    /// All workers joined; training.
    Running,
    /// Every worker finished.
    Finished,
    /// The run cannot complete (a worker died or failed); see [`Coordinator::failure`].
    Failed,
}

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

/// Rank 0's NCCL id when every member is a CUDA worker that sent one; otherwise empty (the TCP
/// ring), counted and logged when only some members could have used NCCL.
pub(crate) fn group_nccl_id(members: &[Member], run: &TrainConfig) -> Vec<u8> {
    // The bf16 gradient wire is the ring's: such a group never gets NCCL.
    if run.grad_wire != resnet_train::GradWire::F32 {
        return Vec::new();
    }
    let capable = |m: &Member| m.device.starts_with("cuda") && m.nccl_id.len() == 128;
    let n = members.iter().filter(|m| capable(m)).count();
    if n == members.len() && n > 0 {
        return members[0].nccl_id.clone();
    }
    if n > 0 || members.iter().any(|m| m.device.starts_with("cuda")) {
        let devices: Vec<&str> = members.iter().map(|m| m.device.as_str()).collect();
        tracing::warn!(?devices, "not every rank can use NCCL (mixed devices or NCCL missing): the group all-reduces over the TCP ring");
        metrics::counter!(crate::metrics::COLLECTIVE_FALLBACKS).increment(1);
    }
    Vec::new()
}

#[derive(Default)]
pub(crate) struct Inner {
    pub(crate) members: Vec<Member>,
    pub(crate) generation: u64,
    pub(crate) reports: BTreeMap<u32, Vec<Option<EpochReport>>>,
    pub(crate) partial: BTreeMap<u32, Vec<Option<EpochReport>>>,
    epochs: Vec<ClusterEpoch>,
    pub(crate) finished: Vec<Option<Finish>>,
    summary: Option<RunSummary>,
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
    pub(crate) failed_stores: Vec<resnet_train::FailedSave>,
    /// The operator asked the run to stop (SIGTERM): heartbeat replies tell the workers.
    pub(crate) stopping: bool,
    /// Last step written to `steps.jsonl` (from rank 0's heartbeats).
    step_logged: u64,
    /// Writing `steps.jsonl` failed once (logged once; the run goes on).
    step_log_failed: bool,
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
    classes: Vec<String>,
    inner: Mutex<Inner>,
    phase: watch::Sender<Phase>,
    /// The current generation, for rejoining workers waiting on a regroup.
    pub(crate) generation_tx: watch::Sender<u64>,
    started: Instant,
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
                let m = resnet_train::verify(dir).map_err(|e| e.to_string())?;
                Some((dir.clone(), m.step as u64, m.epoch as u32))
            }
            None => None,
        };
        // Uploads are held in memory until verified: no more than this run's checkpoints weigh.
        let max_bytes = resnet_train::checkpoint_bytes_bound(&cfg.run)
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
            inner.epochs = read_lines(&out.join("metrics.jsonl"))
                .into_iter()
                .filter(|e| e.complete && e.step <= *step)
                .collect();
        }
        // steps.jsonl likewise (a fresh run starts it empty).
        if let Some(out) = &cfg.out {
            let step = resume.as_ref().map_or(0, |r| r.1);
            inner.step_logged = step;
            if let Err(e) = resnet_train::step_log::truncate_after(out, step as usize) {
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

    fn check_join(&self, req: &JoinRequest) -> Result<(), Refusal> {
        if req.protocol_version != PROTOCOL_VERSION {
            return Err(Refusal::Incompatible(format!(
                "worker '{}' speaks protocol v{}, this coordinator speaks v{PROTOCOL_VERSION}",
                req.worker_id, req.protocol_version
            )));
        }
        if req.fingerprint != self.cfg.fingerprint {
            return Err(Refusal::Incompatible(format!(
                "worker '{}' build fingerprint '{}' does not match the coordinator's '{}'",
                req.worker_id, req.fingerprint, self.cfg.fingerprint
            )));
        }
        if req.worker_id.is_empty() || req.worker_id.len() > 256 {
            return Err(Refusal::Invalid(
                "worker_id must be 1..256 characters".into(),
            ));
        }
        if req.data_addr.is_empty() || !req.data_addr.contains(':') || req.data_addr.len() > 256 {
            return Err(Refusal::Invalid(format!(
                "data_addr '{}' is not host:port",
                req.data_addr
            )));
        }
        Ok(())
    }

    /// Rendezvous. Registers the worker, and once `workers` have joined, answers every one of
    /// them with its rank and the group. A worker whose request is dropped before that (its
    /// connection closed) is removed again, so it never receives a rank.
    pub async fn join(&self, req: JoinRequest) -> Result<Assignment, Refusal> {
        self.check_join(&req)?;
        // Rejoining a group that is training re-forms it. A rejoin while waiting (this coordinator
        // was restarted, e.g. with --resume latest) is an ordinary join: the group forms anew.
        if req.rejoin && self.phase() != Phase::Waiting {
            return self.rejoin(req, false).await;
        }
        // A new worker while training: elastic scale-up, when the run can heal it.
        if self.phase() == Phase::Running && self.store.is_some() {
            return self.rejoin(req, true).await;
        }
        {
            let mut inner = self.lock();
            match self.phase() {
                Phase::Waiting => {}
                Phase::Running => {
                    return Err(Refusal::NotJoinable(format!(
                        "the run already has its {} workers and is training (generation {})",
                        inner.world, inner.generation
                    )))
                }
                Phase::Finished | Phase::Failed => {
                    return Err(Refusal::NotJoinable("the run has ended".into()))
                }
            }
            if inner.members.iter().any(|m| m.worker_id == req.worker_id) {
                return Err(Refusal::NotJoinable(format!(
                    "a worker named '{}' already joined",
                    req.worker_id
                )));
            }
            // Survivors of a previous coordinator: number the new group above their old one.
            inner.generation = inner.generation.max(req.generation);
            inner.members.push(Member {
                worker_id: req.worker_id.clone(),
                data_addr: req.data_addr.clone(),
                device: req.device.clone(),
                nccl_id: req.nccl_id.clone(),
                last_seen: Instant::now(),
                step: 0,
                loss: f64::NAN,
                images_per_sec: 0.0,
                misses: 0,
            });
            crate::metrics::membership("joined");
            tracing::info!(worker = %req.worker_id, device = %req.device, data_addr = %req.data_addr, joined = inner.members.len(), of = inner.world, "worker joined");
            if inner.members.len() == inner.world {
                inner.generation += 1;
                let n = inner.world;
                self.generation_tx.send_replace(inner.generation);
                inner.finished = vec![None; n];
                let now = Instant::now();
                inner.members.iter_mut().for_each(|m| m.last_seen = now);
                tracing::info!(
                    generation = inner.generation,
                    world = n,
                    "group complete, training starts"
                );
                self.set_phase(Phase::Running);
                metrics::gauge!(crate::metrics::GENERATION).set(inner.generation as f64);
                metrics::gauge!(crate::metrics::WORKERS_ALIVE).set(n as f64);
            }
        }
        let guard = LeaveOnDrop {
            coord: self,
            worker_id: Some(req.worker_id.clone()),
        };
        let mut rx = self.phase.subscribe();
        let waited =
            tokio::time::timeout(self.cfg.join_timeout, rx.wait_for(|p| *p != Phase::Waiting))
                .await;
        let mut guard = guard;
        if waited.is_err() {
            let joined = self.lock().members.len();
            drop(guard); // removes this worker
            return Err(Refusal::Timeout(format!(
                "rendezvous timed out after {:?}: {joined} of {} workers joined",
                self.cfg.join_timeout, self.cfg.workers
            )));
        }
        guard.worker_id = None;
        let inner = self.lock();
        let rank = inner
            .members
            .iter()
            .position(|m| m.worker_id == req.worker_id)
            .ok_or_else(|| Refusal::Unknown("worker left during rendezvous".into()))?;
        Ok(Assignment {
            rank,
            world: inner.members.len(),
            generation: inner.generation,
            run_config_json: self.run_json.clone(),
            peers: inner.members.iter().map(|m| m.data_addr.clone()).collect(),
            central_checkpoints: self.store.is_some(),
            resume_step: self.resume.as_ref().map_or(0, |r| r.1),
            heal: false,
            nccl_id: group_nccl_id(&inner.members, &self.cfg.run),
        })
    }

    pub(crate) fn member(
        &self,
        inner: &Inner,
        worker_id: &str,
        rank: usize,
        generation: u64,
    ) -> Result<usize, Refusal> {
        let idx = inner
            .members
            .iter()
            .position(|m| m.worker_id == worker_id)
            .ok_or_else(|| Refusal::Unknown(format!("unknown worker '{worker_id}'")))?;
        if idx != rank {
            return Err(Refusal::Unknown(format!(
                "worker '{worker_id}' has rank {idx}, not {rank}"
            )));
        }
        if generation != inner.generation {
            return Err(Refusal::Unknown(format!(
                "stale generation {generation} from '{worker_id}' (current {})",
                inner.generation
            )));
        }
        Ok(idx)
    }

    /// The run configuration every worker receives at join (JSON), for workers that warm up
    /// before joining.
    pub fn run_config_json(&self) -> String {
        self.run_json.clone()
    }

    /// Records liveness and progress. Returns whether the worker should stop.
    pub fn heartbeat(&self, hb: Heartbeat) -> Result<resnet_proto::HeartbeatReply, Refusal> {
        let mut inner = self.lock();
        // A member of an older generation, or any member while the group re-forms: rejoin.
        let regrouping = inner.regroup.is_some() || hb.generation < inner.generation;
        let known = inner.members.iter().any(|m| m.worker_id == hb.worker_id)
            || inner
                .regroup
                .as_ref()
                .is_some_and(|r| r.expects(&hb.worker_id));
        if regrouping && known {
            inner.highest_step = inner.highest_step.max(hb.step);
            return Ok(resnet_proto::HeartbeatReply {
                stop: false,
                regroup: true,
            });
        }
        let idx = self.member(&inner, &hb.worker_id, hb.rank, hb.generation)?;
        inner.highest_step = inner.highest_step.max(hb.step);
        let m = &mut inner.members[idx];
        m.last_seen = Instant::now();
        m.misses = 0;
        m.step = hb.step;
        m.loss = hb.loss;
        m.images_per_sec = hb.images_per_sec;
        metrics::counter!(crate::metrics::HEARTBEATS_TOTAL).increment(1);
        let slowest = inner.members.iter().map(|m| m.step).min().unwrap_or(0);
        metrics::gauge!(crate::metrics::RUN_STEP).set(slowest as f64);
        let reply = resnet_proto::HeartbeatReply {
            stop: inner.stopping,
            regroup: false,
        };
        // Rank 0's progress is the run's loss curve between epochs (steps.jsonl).
        let line = match &self.cfg.out {
            Some(out) if idx == 0 && hb.step > inner.step_logged && !inner.step_log_failed => {
                inner.step_logged = hb.step;
                let epoch = inner.epochs.len() + 1;
                Some((
                    out.join(resnet_train::STEP_LOG),
                    resnet_train::step_log::heartbeat_record(
                        hb.step as usize,
                        epoch,
                        hb.loss,
                        hb.images_per_sec,
                    ),
                ))
            }
            _ => None,
        };
        drop(inner);
        if let Some((path, r)) = line {
            if let Err(e) = resnet_train::step_log::append(&path, &r) {
                tracing::warn!(file = %path.display(), error = %e, "cannot write the step metrics (the run goes on; not retried)");
                self.lock().step_log_failed = true;
            }
        }
        Ok(reply)
    }

    /// Stores one rank's epoch counts; when every rank has reported the epoch, logs and records
    /// the cluster's epoch.
    pub fn report_epoch(&self, r: EpochReport) -> Result<(), Refusal> {
        let complete = r.complete;
        let mut inner = self.lock();
        let idx = self.member(&inner, &r.worker_id, r.rank, r.generation)?;
        let k = r.num_classes;
        // A peer's num_classes may be anything: no k * k before the bound (found by
        // tests/fuzz_requests.rs: it overflowed and panicked).
        if !r.confusion.is_empty() && (k == 0 || k > 10_000 || r.confusion.len() != k * k) {
            return Err(Refusal::Invalid(match k.checked_mul(k) {
                Some(kk) if (1..=10_000).contains(&k) => format!(
                    "confusion has {} entries, expected num_classes^2 = {kk}",
                    r.confusion.len()
                ),
                _ => format!("num_classes = {k} is out of range (1..=10000)"),
            }));
        }
        let n = inner.world;
        let epoch = r.epoch;
        let table = if complete {
            &mut inner.reports
        } else {
            &mut inner.partial
        };
        let slot = table.entry(epoch).or_insert_with(|| vec![None; n]);
        slot[idx] = Some(r);
        if slot.iter().all(Option::is_some) {
            let reports: Vec<EpochReport> = slot.iter().flatten().cloned().collect();
            let merged = merge_epoch(&reports, complete, &self.classes);
            log_epoch(&merged);
            if complete {
                let done = inner.epochs.iter().filter(|e| e.complete).count() + 1;
                crate::metrics::epoch(&merged, done);
                if let (Some(store), Some(t)) = (&self.store, &merged.test) {
                    store
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .record_accuracy(merged.step, t.accuracy);
                }
            }
            inner.epochs.push(merged);
            if let Some(out) = &self.cfg.out {
                write_lines(&out.join("metrics.jsonl"), &inner.epochs);
            }
        }
        Ok(())
    }

    /// Records a finished worker; the last one completes the run.
    pub fn finish(&self, f: Finish) -> Result<(), Refusal> {
        let mut inner = self.lock();
        let idx = self.member(&inner, &f.worker_id, f.rank, f.generation)?;
        tracing::info!(worker = %f.worker_id, rank = idx, steps = f.steps, param_hash = %f.param_hash, "worker finished");
        inner.finished[idx] = Some(f);
        crate::metrics::membership("finished");
        if inner.finished.iter().all(Option::is_some) {
            let hashes: Vec<String> = inner
                .finished
                .iter()
                .flatten()
                .map(|f| f.param_hash.clone())
                .collect();
            let summary = RunSummary {
                world: inner.members.len(),
                generation: inner.generation,
                steps: inner
                    .finished
                    .iter()
                    .flatten()
                    .map(|f| f.steps)
                    .max()
                    .unwrap_or(0),
                epochs: inner.epochs.clone(),
                replicas_identical: hashes.iter().all(|h| h == &hashes[0]),
                param_hashes: hashes,
                final_eval: inner.epochs.iter().rev().find_map(|e| e.test.clone()),
                regroups: inner.regroups.clone(),
                failed_checkpoints: inner.failed_stores.clone(),
                stored_step: inner.stored_step,
                interrupted: inner.stopping,
            };
            if let Some(out) = &self.cfg.out {
                write_json(&out.join("summary.json"), &summary);
            }
            inner.summary = Some(summary);
            self.set_phase(Phase::Finished);
        }
        Ok(())
    }

    /// Per-worker progress for logs: (worker id, step, loss, images/s, seconds since heard from).
    pub fn progress(&self) -> Vec<(String, u64, f64, f64, f64)> {
        self.lock()
            .members
            .iter()
            .map(|m| {
                (
                    m.worker_id.clone(),
                    m.step,
                    m.loss,
                    m.images_per_sec,
                    m.last_seen.elapsed().as_secs_f64(),
                )
            })
            .collect()
    }

    /// Workers joined so far and their devices.
    pub fn members(&self) -> Vec<(String, String)> {
        self.lock()
            .members
            .iter()
            .map(|m| (m.worker_id.clone(), m.device.clone()))
            .collect()
    }

    fn leave(&self, worker_id: &str) {
        let mut inner = self.lock();
        if self.phase() == Phase::Waiting {
            inner.members.retain(|m| m.worker_id != worker_id);
            crate::metrics::membership("left");
            tracing::warn!(
                worker = worker_id,
                joined = inner.members.len(),
                "worker left before the group was complete"
            );
        }
    }
}

/// Removes a joining worker if its request ends before the group is complete.
struct LeaveOnDrop<'a> {
    coord: &'a Coordinator,
    worker_id: Option<String>,
}

impl Drop for LeaveOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.worker_id.take() {
            self.coord.leave(&id);
        }
    }
}

fn log_epoch(e: &ClusterEpoch) {
    let test = e
        .test
        .as_ref()
        .map(|t| {
            format!(
                " | test acc {:.4} top5 {:.4} loss {:.4} ({} images)",
                t.accuracy, t.top5, t.loss, t.samples
            )
        })
        .unwrap_or_default();
    let what = if e.complete { "epoch" } else { "partial epoch" };
    tracing::info!(
        "{what} {} step {} | train loss {:.4} acc {:.4} | lr {:.5} | {:.0} img/s{test}",
        e.epoch,
        e.step,
        e.train_loss,
        e.train_accuracy,
        e.lr,
        e.images_per_sec
    );
}

fn write_lines(path: &std::path::Path, epochs: &[ClusterEpoch]) {
    let text: String = epochs
        .iter()
        .filter_map(|e| serde_json::to_string(e).ok())
        .map(|l| l + "\n")
        .collect();
    if let Err(e) = std::fs::write(path, text) {
        tracing::error!(path = %path.display(), error = %e, "cannot write metrics");
    }
}

fn read_lines(path: &std::path::Path) -> Vec<ClusterEpoch> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn write_json<T: serde::Serialize>(path: &std::path::Path, v: &T) {
    match serde_json::to_vec_pretty(v) {
        Ok(bytes) => {
            if let Err(e) = std::fs::write(path, bytes) {
                tracing::error!(path = %path.display(), error = %e, "cannot write summary");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot serialise summary"),
    }
}
