//! The training loop: data -> forward -> loss -> backward -> [all-reduce] -> optimizer, with
//! per-epoch evaluation, metrics files and checkpoints that resume bit-exactly. The same loop
//! runs one process (`resnet train`) or one replica of a data-parallel group (a worker).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ElementConversion;
use resnet_data::{
    num_batches, Batch, ImageDataset, Loader, LoaderConfig, Normalization, ShardPlan, Splits,
    Transform,
};
use resnet_kernels::KernelChoice;
use resnet_model::ResNet;

use crate::checkpoint::{
    config_fingerprint, prune, verify, write_checkpoint_with, write_json_synced, ManifestInfo,
    FORMAT_VERSION,
};
use crate::eval::{batch_tensor, evaluate};
use crate::finetune::take_head_grads;
use crate::guard::{nonfinite, Guard, Verdict};
use crate::loss::{smoothed_targets, soft_cross_entropy, targets_tensor};
use crate::metrics::{argmax, EvalCounts, EvalReport};
use crate::mix::{mix_images, mixed_targets};
use crate::parallel::{broadcast_model, sync_batchnorm, sync_gradients_with, GradSync};
use crate::record_io;
use crate::records::CheckpointInfo;
use crate::records::{
    EpochCounts, EpochRecord, EvalSummary, StepStats, StepTiming, TrainObserver, TrainState,
    TrainSummary,
};
use crate::saves::{lost, SaveLog, RETRY_PAUSE, SAVE_ATTEMPTS};
use crate::{param_hash, AnyOptimizer, NonFinitePolicy, ScheduleKind, TrainConfig, TrainError};

/// What `on_nonfinite = rollback` returns to: the state of the newest checkpoint (or epoch end),
/// kept in memory on every rank (tensors are shared, not copied, until training replaces them).
struct Snapshot<B: AutodiffBackend> {
    model: ResNet<B>,
    optim: AnyOptimizer<B>,
    state: TrainState,
    checkpointed_at: Option<usize>,
    bn_synced_at: Option<usize>,
}

/// A model, its optimizer and data, and the state that says where training is.
pub struct Trainer<B: AutodiffBackend> {
    device: B::Device,
    model: Option<ResNet<B>>,
    optim: AnyOptimizer<B>,
    state: TrainState,
    train: Arc<ImageDataset>,
    test: Arc<ImageDataset>,
    norm: Normalization,
    out: Option<PathBuf>,
    last_saved: Option<(usize, PathBuf)>,
    parallel: Option<Box<dyn GradSync>>,
    /// Gradient bytes all-reduced by the last step (for throughput metrics).
    last_allreduce_bytes: usize,
    /// Step at which BatchNorm statistics were last averaged over the replicas.
    bn_synced_at: Option<usize>,
    /// Step of the last checkpoint (attempted, on every rank).
    checkpointed_at: Option<usize>,
    /// When the last checkpoint was taken (or training started), for `checkpoint_minutes`.
    last_checkpoint_time: Instant,
    /// The group agreed in the last step's all-reduce that a time-based checkpoint is due.
    time_checkpoint_due: bool,
    /// This process was asked to stop (`TrainObserver::stop_requested`) before the step.
    stop_wanted: bool,
    /// The group agreed in the last step's all-reduce to stop after it (any rank wanted to).
    stop_agreed: bool,
    /// The divergence guard's memory (`on_nonfinite`).
    guard: Guard,
    /// The last step's training loss (for the message when a checkpoint finds non-finite
    /// weights).
    last_loss: f64,
    /// `on_nonfinite = rollback`: the state to return to (taken at every checkpoint).
    snapshot: Option<Snapshot<B>>,
    /// After a rollback: batches are passed over until this global step (the one that was not
    /// finite) has been reached again.
    skip_until: usize,
    /// Checkpoints that failed, and when that stops the run.
    saves: SaveLog,
    /// The kernels the caller chose (`with_kernels`); the model runs them with the run's
    /// convolution precision.
    kernels: KernelChoice,
}

static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A freshly initialised model of `cfg`, from `cfg.seed`.
pub(crate) fn init_model<B: AutodiffBackend>(
    cfg: &TrainConfig,
    device: &B::Device,
) -> Result<ResNet<B>, TrainError> {
    // Backends keep one process-wide RNG: models created concurrently (replicas that are
    // threads of one process, a warm-up beside a trainer) must not interleave their draws, or
    // the weights would depend on thread scheduling instead of the seed.
    let _guard = INIT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    B::seed(device, cfg.seed);
    let model = cfg
        .model
        .init::<B>(device)
        .map_err(|e| TrainError::Config(e.to_string()))?;
    // Parameters initialise lazily on first read; read them all now, in a fixed order.
    let _ = param_hash(&model);
    Ok(model)
}

fn ckpt_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint(format!("{}: {e}", path.display()))
}

/// Reads `state.json` of a verified checkpoint directory.
pub fn load_state(dir: &Path) -> Result<TrainState, TrainError> {
    verify(dir)?;
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ckpt_err(&path, e))?;
    serde_json::from_str(&text).map_err(|e| ckpt_err(&path, format!("malformed state: {e}")))
}

/// Loads the model stored in a checkpoint directory onto any backend (for `resnet eval`).
pub fn load_model<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(ResNet<B>, TrainState), TrainError> {
    let state = load_state(dir)?;
    let model = state
        .config
        .model
        .init::<B>(device)
        .map_err(|e| TrainError::Config(e.to_string()))?;
    // Burn's loader panics on a record that does not fit the model: check shapes first.
    let path = record_io::mpk_path(&dir.join("model"));
    let bytes = std::fs::read(&path).map_err(|e| ckpt_err(&path, e))?;
    record_io::check_fits::<B, _>(&bytes, &model).map_err(|e| {
        let m = &state.config.model;
        ckpt_err(
            &path,
            format!(
                "does not hold the model state.json describes (ResNet-{}, width {}, {} classes): {e}",
                m.depth, m.width, m.num_classes
            ),
        )
    })?;
    let model = model
        .load_file(dir.join("model"), &record_io::FileRecorder::new(), device)
        .map_err(|e| ckpt_err(&dir.join("model.mpk"), format!("cannot read model: {e}")))?;
    Ok((model, state))
}

fn prepare_out(out: &Option<PathBuf>, cfg: &TrainConfig) -> Result<(), TrainError> {
    if let Some(o) = out {
        std::fs::create_dir_all(o).map_err(|e| ckpt_err(o, e))?;
        write_json_synced(&o.join("config.json"), cfg)?;
    }
    Ok(())
}

/// `kernels` with the arithmetic of the run `cfg` (every replica of a run has the same
/// configuration, so every replica computes the same way).
pub(crate) fn run_kernels(kernels: KernelChoice, cfg: &TrainConfig) -> KernelChoice {
    kernels.with_precision(cfg.conv_precision)
}

impl<B: AutodiffBackend> Trainer<B> {
    /// A fresh run. `cfg.model.num_classes` must match the data.
    pub fn new(
        cfg: TrainConfig,
        splits: Splits,
        device: B::Device,
        out: Option<PathBuf>,
    ) -> Result<Self, TrainError> {
        cfg.validate()?;
        check_classes(&cfg, &splits)?;
        if let Some(o) = &out {
            if !crate::checkpoint::list_checkpoints(&o.join("checkpoints")).is_empty() {
                return Err(TrainError::Config(format!(
                    "{} already holds checkpoints of a run; continue it with --resume {} or choose another --out",
                    o.display(),
                    o.display()
                )));
            }
        }
        prepare_out(&out, &cfg)?;
        let mut model = init_model::<B>(&cfg, &device)?;
        if let Some(file) = &cfg.finetune.pretrained {
            let report = resnet_model::import_backbone(&mut model, file)
                .map_err(|e| TrainError::Config(format!("finetune.pretrained: {e}")))?;
            tracing::info!(
                file = %file.display(),
                tensors = report.applied,
                "loaded pretrained backbone; the classifier starts fresh"
            );
        }
        let model = cfg
            .finetune
            .freeze_batchnorm(model.set_frozen_batchnorm(cfg.freeze_bn));
        let optim = cfg.optim.init::<B>();
        let state = TrainState {
            format_version: FORMAT_VERSION,
            epoch: 0,
            batch_in_epoch: 0,
            global_step: 0,
            config: cfg,
            history: Vec::new(),
            epoch_loss_sum: 0.0,
            epoch_correct: 0,
            epoch_seen: 0,
            epoch_seconds: 0.0,
        };
        Ok(Self::assemble(device, model, optim, state, splits, out))
    }

    /// Continues from a checkpoint directory. `state.config` (possibly with `epochs`/`max_steps`
    /// changed by the caller) is the run's configuration.
    pub fn resume(
        dir: &Path,
        state: TrainState,
        splits: Splits,
        device: B::Device,
        out: Option<PathBuf>,
    ) -> Result<Self, TrainError> {
        state.config.validate()?;
        check_classes(&state.config, &splits)?;
        let (model, _) = load_model::<B>(dir, &device)?;
        let model = state
            .config
            .finetune
            .freeze_batchnorm(model.set_frozen_batchnorm(state.config.freeze_bn));
        let optim = state
            .config
            .optim
            .init::<B>()
            .load(&dir.join("optim"), &device)?;
        prepare_out(&out, &state.config)?;
        Ok(Self::assemble(device, model, optim, state, splits, out))
    }

    fn assemble(
        device: B::Device,
        model: ResNet<B>,
        optim: AnyOptimizer<B>,
        state: TrainState,
        splits: Splits,
        out: Option<PathBuf>,
    ) -> Self {
        let kernels = run_kernels(KernelChoice::default(), &state.config);
        if kernels.precision != KernelChoice::default().precision {
            tracing::info!(
                conv_precision = kernels.precision.name(),
                "convolution arithmetic"
            );
        }
        Self {
            device,
            model: Some(model.with_kernels(kernels)),
            optim,
            state,
            train: Arc::new(splits.train),
            test: Arc::new(splits.test),
            norm: splits.norm,
            out,
            last_saved: None,
            parallel: None,
            last_allreduce_bytes: 0,
            bn_synced_at: None,
            checkpointed_at: None,
            last_checkpoint_time: Instant::now(),
            time_checkpoint_due: false,
            stop_wanted: false,
            stop_agreed: false,
            guard: Guard::default(),
            last_loss: f64::NAN,
            snapshot: None,
            skip_until: 0,
            saves: SaveLog::default(),
            kernels,
        }
    }

    /// Runs the model's layers with the kernels `k` chooses (the binaries pass what the flags
    /// and the device select), in the run's convolution precision whatever `k.precision` says.
    /// Without it the trainer uses [`KernelChoice::default`].
    pub fn with_kernels(mut self, k: KernelChoice) -> Self {
        self.kernels = run_kernels(k, &self.state.config);
        let kernels = self.kernels;
        self.model = self.model.take().map(|m| m.with_kernels(kernels));
        self
    }

    /// The kernels the model runs.
    pub fn kernels(&self) -> KernelChoice {
        self.kernels
    }

    /// Makes this trainer one replica of a data-parallel group: it reads its rank's shard,
    /// averages gradients and BatchNorm statistics through `sync`, and evaluates its slice of the
    /// test set, reported through [`TrainObserver::on_epoch_counts`]. Replicas start identical
    /// because every rank initialises from the same seed.
    pub fn with_parallel(mut self, sync: Box<dyn GradSync>) -> Self {
        self.parallel = Some(sync);
        self
    }

    /// Replaces the data-parallel group (after the group was re-formed).
    pub fn set_parallel(&mut self, sync: Box<dyn GradSync>) {
        self.parallel = Some(sync);
        self.bn_synced_at = None;
    }

    /// Stops the run with [`TrainError::CheckpointLost`] after `n` checkpoints in a row could
    /// not be written (0: never; the default, for replicas whose coordinator keeps the run's
    /// checkpoints). The final checkpoint failing is an error whatever `n` is.
    pub fn set_max_checkpoint_failures(&mut self, n: usize) {
        self.saves.limit = n;
    }

    /// Where checkpoints and records go from now on (only the group's rank 0 writes them).
    pub fn set_out(&mut self, out: Option<PathBuf>) {
        self.out = out;
    }

    /// The last checkpoint this trainer wrote: (step, directory).
    pub fn last_checkpoint(&self) -> Option<&(usize, PathBuf)> {
        self.last_saved.as_ref()
    }

    /// The current model.
    pub fn model(&self) -> &ResNet<B> {
        self.model
            .as_ref()
            .expect("the model is only absent inside a step")
    }

    /// Where the run is.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// The group to exchange with, if there is anyone to exchange with: a group of one skips
    /// the flatten/copy work (it still reports through the observer like any replica).
    fn peers(&mut self) -> Option<&mut Box<dyn GradSync>> {
        self.parallel.as_mut().filter(|p| p.world() > 1)
    }

    fn rank_world(&self) -> (usize, usize) {
        self.parallel
            .as_ref()
            .map_or((0, 1), |p| (p.rank(), p.world()))
    }

    fn shard_plan(&self, epoch: usize) -> ShardPlan {
        let (rank, world) = self.rank_world();
        let cfg = &self.state.config;
        ShardPlan {
            seed: cfg.seed,
            epoch: epoch as u64,
            world,
            rank,
            shuffle: true,
            drop_last: cfg.shard_drop_last,
        }
    }

    /// Steps per epoch: batches in this rank's shard (partial last batches are dropped).
    pub fn steps_per_epoch(&self) -> usize {
        let (_, world) = self.rank_world();
        let len = self.train.len();
        let shard = if self.state.config.shard_drop_last {
            len / world
        } else {
            len.div_ceil(world)
        };
        num_batches(shard, self.state.config.batch_size, true)
    }

    /// Trains until `epochs` are done or `max_steps` is reached, then evaluates and checkpoints.
    pub fn fit(&mut self, obs: &mut dyn TrainObserver) -> Result<TrainSummary, TrainError> {
        let cfg = self.state.config.clone();
        let spe = self.steps_per_epoch();
        if spe == 0 {
            return Err(TrainError::Config(format!(
                "{} has {} images, fewer than one batch of {} per rank",
                self.train.name,
                self.train.len(),
                cfg.batch_size
            )));
        }
        let total = cfg.epochs * spe;
        let limit = cfg.max_steps.unwrap_or(usize::MAX).min(total);
        if self.peers().is_some() {
            // A copy goes out (tensors are shared, not copied): a failed broadcast leaves this
            // replica's model in place for whoever heals or regroups next.
            let model = self.model().clone();
            let sync = self.peers().expect("checked above");
            self.model = Some(broadcast_model(model, sync.as_mut(), 0)?);
        }
        obs.on_start(spe, limit, self.state.global_step);
        self.take_snapshot();
        let mut interrupted = false;
        let loader_cfg = LoaderConfig {
            batch_size: cfg.batch_size,
            workers: cfg.loader_workers,
            prefetch: 2,
            drop_last: true,
        };
        while self.state.epoch < cfg.epochs && self.state.global_step < limit {
            let epoch = self.state.epoch;
            let indices = self.shard_plan(epoch).indices(self.train.len());
            let tf = Transform {
                augment: cfg.data.augment.clone(),
                norm: self.norm,
                seed: cfg.seed,
                epoch: epoch as u64,
            };
            let loader = Loader::new(
                self.train.clone(),
                indices,
                &loader_cfg,
                tf,
                self.state.batch_in_epoch,
            );
            let mut waited = Instant::now();
            let mut rolled_back = false;
            for batch in loader {
                if self.state.global_step < self.skip_until {
                    // A batch of the window that led into a divergence: passed over.
                    self.state.global_step += 1;
                    self.state.batch_in_epoch += 1;
                    if self.state.global_step >= limit {
                        break;
                    }
                    continue;
                }
                let data = waited.elapsed().as_secs_f64();
                let lr = self.lr_at(self.state.global_step, spe, total);
                if obs.regroup_requested() {
                    return Err(TrainError::Collective(crate::parallel::SyncError::Regroup));
                }
                self.stop_wanted = obs.stop_requested();
                let (loss, correct, mut timing, verdict) = self.train_step(&batch, lr)?;
                self.last_loss = loss;
                if verdict == Verdict::Rollback {
                    self.roll_back(self.state.global_step + 1)?;
                    rolled_back = true;
                    interrupted = self.stop_agreed;
                    break;
                }
                timing.data = data;
                let s = &mut self.state;
                s.global_step += 1;
                s.batch_in_epoch += 1;
                if verdict == Verdict::Apply {
                    s.epoch_loss_sum += loss * batch.n as f64;
                    s.epoch_correct += correct as u64;
                    s.epoch_seen += batch.n as u64;
                } else {
                    tracing::warn!(
                        step = s.global_step,
                        loss,
                        skipped = self.guard.skipped,
                        "non-finite loss: step skipped (on_nonfinite = skip-step)"
                    );
                }
                s.epoch_seconds += timing.total();
                obs.on_step(&StepStats {
                    epoch,
                    step: s.global_step,
                    batch: s.batch_in_epoch - 1,
                    steps_per_epoch: spe,
                    loss,
                    epoch_accuracy: s.epoch_correct as f64 / s.epoch_seen.max(1) as f64,
                    lr,
                    images: batch.n,
                    timing,
                    allreduce_bytes: self.last_allreduce_bytes,
                    world: self.parallel.as_ref().map_or(1, |p| p.world()),
                });
                let step_due = cfg
                    .checkpoint_steps
                    .is_some_and(|n| n > 0 && s.global_step.is_multiple_of(n));
                // A finite loss can hide a non-finite gradient (a data-parallel group checks the
                // reduced gradient; alone, the next step's loss shows it). Before anything could
                // save this step's weights, every rank checks them, so all decide alike.
                let saving = step_due
                    || self.time_checkpoint_due
                    || s.batch_in_epoch == spe
                    || s.global_step >= limit
                    || self.stop_agreed
                    || (self.peers().is_none() && obs.stop_requested());
                if saving && !crate::guard::weights_finite(&self.model().valid()) {
                    let step = self.state.global_step;
                    let policy = self.state.config.on_nonfinite;
                    match self.guard.decide(policy, true, step, loss) {
                        Ok(Verdict::Rollback) => {
                            self.roll_back(step)?;
                            rolled_back = true;
                            interrupted = self.stop_agreed;
                            break;
                        }
                        other => {
                            // `skip-step` cannot take back a step already applied; `stop` and
                            // a `rollback` out of tries say why they stop.
                            let rule = match other {
                                Err(TrainError::NonFinite { why, .. }) => why,
                                _ => format!("on_nonfinite = {}", policy.name()),
                            };
                            return Err(TrainError::NonFinite {
                                step,
                                loss,
                                why: format!(
                                    "the weights after this step are not finite (its gradient \
                                     was not), so nothing of it is saved; {rule}"
                                ),
                            });
                        }
                    }
                }
                if step_due || self.time_checkpoint_due {
                    self.checkpoint(obs)?;
                }
                if self.state.global_step >= limit {
                    break;
                }
                // A group stops at the step its all-reduce agreed on, so every rank saves the
                // same state; a process on its own also stops on a request during the step.
                if self.stop_agreed || (self.peers().is_none() && obs.stop_requested()) {
                    interrupted = true;
                    break;
                }
                waited = Instant::now();
            }
            // Back at the newest checkpoint's step: the loader starts again from there.
            if rolled_back && !interrupted {
                continue;
            }
            // Stopped by max_steps inside the epoch, or asked to stop (then the epoch's end and
            // its evaluation are left to the resumed run: a resume at the last batch of an
            // epoch finishes it).
            if interrupted || self.state.batch_in_epoch < spe {
                break;
            }
            let lr = self.lr_at(self.state.global_step.saturating_sub(1), spe, total);
            self.finish_epoch(&cfg, lr, obs)?;
        }
        self.sync_replicas()?;
        let final_eval = if interrupted {
            // A stop has a deadline (Kubernetes' grace period): save, skip the evaluation.
            None
        } else if self.parallel.is_some() {
            // Each rank holds a slice of the evaluation and the coordinator sums the counts; a run
            // that stopped inside an epoch reports that partial epoch with its evaluation.
            if self.state.batch_in_epoch > 0 || self.state.history.is_empty() {
                let lr = self.lr_at(self.state.global_step.saturating_sub(1), spe, total);
                let counts = self.epoch_counts(false, lr);
                obs.on_epoch_counts(&counts);
            }
            None
        } else {
            self.evaluate_test()
        };
        if self.checkpointed_at != Some(self.state.global_step) {
            self.checkpoint(obs)?;
        }
        // The final state must be on disk: a run that ends without it lost its result.
        let final_lost = match (&self.out, self.saves.failed.last()) {
            (Some(out), Some(f))
                if self.last_saved.as_ref().map(|(s, _)| *s) != Some(self.state.global_step) =>
            {
                Some(lost(
                    self.state.global_step,
                    f.error.clone(),
                    "the final checkpoint could not be written".into(),
                    &out.join("checkpoints"),
                ))
            }
            _ => None,
        };
        let summary = TrainSummary {
            steps: self.state.global_step,
            epochs_completed: self.state.history.len(),
            history: self.state.history.clone(),
            final_eval,
            checkpoint: self.last_saved.as_ref().map(|(_, p)| p.clone()),
            param_hash: param_hash(&self.model().valid()),
            interrupted,
            failed_checkpoints: self.saves.failed.clone(),
            skipped_steps: self.guard.skipped,
            rollbacks: self.guard.rollbacks,
        };
        if let Some(o) = &self.out {
            let written = write_json_synced(&o.join("summary.json"), &summary);
            if let Some(e) = final_lost {
                if let Err(w) = written {
                    tracing::error!(error = %w, "summary.json not written either");
                }
                return Err(e);
            }
            written?;
        }
        Ok(summary)
    }

    /// Averages BatchNorm statistics over the replicas (no-op for a single process, and when
    /// already done at this step: averaging equal values again could round differently).
    fn sync_replicas(&mut self) -> Result<(), TrainError> {
        let step = self.state.global_step;
        if self.bn_synced_at == Some(step) {
            return Ok(());
        }
        if let (Some(sync), Some(model)) = (
            self.parallel.as_mut().filter(|p| p.world() > 1),
            self.model.as_mut(),
        ) {
            sync_batchnorm(model, sync.as_mut())?;
            self.bn_synced_at = Some(step);
        }
        Ok(())
    }

    /// Before a data-parallel checkpoint: every rank's partial-epoch sums move to rank 0 (the
    /// only rank whose state is saved), so a resumed run reports the epoch exactly once.
    fn pool_epoch_sums(&mut self) -> Result<(), TrainError> {
        let Some(sync) = self.parallel.as_mut().filter(|p| p.world() > 1) else {
            return Ok(());
        };
        let (rank, world) = (sync.rank(), sync.world() as f64);
        let s = &mut self.state;
        let mut buf = [
            s.epoch_loss_sum as f32,
            s.epoch_correct as f32,
            s.epoch_seen as f32,
        ];
        sync.all_reduce_mean(&mut buf)
            .map_err(TrainError::Collective)?;
        if rank == 0 {
            s.epoch_loss_sum = buf[0] as f64 * world;
            s.epoch_correct = (buf[1] as f64 * world).round() as u64;
            s.epoch_seen = (buf[2] as f64 * world).round() as u64;
        } else {
            s.epoch_loss_sum = 0.0;
            s.epoch_correct = 0;
            s.epoch_seen = 0;
        }
        Ok(())
    }

    /// This rank's counts for the epoch in progress, with its slice of the evaluation.
    fn epoch_counts(&self, complete: bool, lr: f64) -> EpochCounts {
        let s = &self.state;
        EpochCounts {
            epoch: s.epoch + 1,
            step: s.global_step,
            complete,
            train_loss_sum: s.epoch_loss_sum,
            train_correct: s.epoch_correct,
            train_seen: s.epoch_seen,
            seconds: s.epoch_seconds,
            lr,
            eval: if s.config.eval_each_epoch || !complete {
                self.eval_counts()
            } else {
                None
            },
        }
    }

    fn finish_epoch(
        &mut self,
        cfg: &TrainConfig,
        lr: f64,
        obs: &mut dyn TrainObserver,
    ) -> Result<(), TrainError> {
        self.sync_replicas()?;
        let mut val_loss = None;
        let test = if self.parallel.is_some() {
            let counts = self.epoch_counts(true, lr);
            obs.on_epoch_counts(&counts);
            if cfg.schedule.kind == ScheduleKind::Plateau {
                val_loss = self.group_val_loss(counts.eval.as_ref())?;
            }
            None // only the coordinator sees the whole evaluation
        } else if cfg.eval_each_epoch {
            self.evaluate_test().map(|r| EvalSummary::from(&r))
        } else {
            None
        };
        let s = &mut self.state;
        let record = EpochRecord {
            epoch: s.epoch + 1,
            step: s.global_step,
            train_loss: s.epoch_loss_sum / s.epoch_seen.max(1) as f64,
            train_accuracy: s.epoch_correct as f64 / s.epoch_seen.max(1) as f64,
            lr,
            test,
            val_loss,
            seconds: s.epoch_seconds,
            images_per_sec: s.epoch_seen as f64 / s.epoch_seconds.max(1e-9),
        };
        s.history.push(record.clone());
        s.epoch += 1;
        s.batch_in_epoch = 0;
        s.epoch_loss_sum = 0.0;
        s.epoch_correct = 0;
        s.epoch_seen = 0;
        s.epoch_seconds = 0.0;
        if let Some(o) = &self.out {
            write_metrics(&o.join("metrics.jsonl"), &s.history)?;
        }
        obs.on_epoch(&record);
        let due =
            cfg.checkpoint_epochs > 0 && self.state.epoch.is_multiple_of(cfg.checkpoint_epochs);
        // A step checkpoint at this very step already holds the same state.
        let fresh = self.checkpointed_at == Some(self.state.global_step);
        if (due || self.state.epoch == cfg.epochs) && !fresh {
            self.checkpoint(obs)?;
        }
        // Also without a checkpoint: a rollback never returns into an epoch whose metrics are
        // recorded (and, in a cluster, reported to the coordinator) already.
        self.take_snapshot();
        Ok(())
    }

    /// The scheduled LR at `step` (plateau reads the epochs recorded so far).
    fn lr_at(&self, step: usize, spe: usize, total: usize) -> f64 {
        let cfg = &self.state.config;
        // Only plateau reads the history; other schedules skip the per-step collection.
        let losses: Vec<f64> = if cfg.schedule.kind == ScheduleKind::Plateau {
            self.state
                .history
                .iter()
                .map(EpochRecord::watched_loss)
                .collect()
        } else {
            Vec::new()
        };
        cfg.schedule
            .lr_with_losses(cfg.optim.lr, step, spe, total, &losses)
    }

    /// Mean validation loss over the whole test split from every rank's slice (data parallel).
    fn group_val_loss(&mut self, eval: Option<&EvalCounts>) -> Result<Option<f64>, TrainError> {
        let Some(sync) = self.parallel.as_mut().filter(|p| p.world() > 1) else {
            return Ok(eval.map(|e| e.loss_sum / e.total().max(1) as f64));
        };
        let (sum, n) = eval.map_or((0.0, 0.0), |e| (e.loss_sum, e.total() as f64));
        // Means of (sum, count) over the ranks; their ratio is the global mean loss.
        let mut buf = [sum as f32, n as f32];
        sync.all_reduce_mean(&mut buf)
            .map_err(TrainError::Collective)?;
        Ok((buf[1] > 0.0).then(|| buf[0] as f64 / buf[1] as f64))
    }

    fn train_step(
        &mut self,
        batch: &Batch,
        lr: f64,
    ) -> Result<(f64, usize, StepTiming, Verdict), TrainError> {
        let k = self.train.classes.len();
        let t0 = Instant::now();
        let mut model = self.model.take().expect("model present between steps");
        let cfg = &self.state.config;
        // `skip-step` restores the BatchNorm statistics of a dropped step (the forward has
        // already folded that batch into them).
        let stats_before: Option<Vec<_>> =
            (cfg.on_nonfinite == NonFinitePolicy::SkipStep).then(|| {
                model
                    .batchnorms()
                    .iter()
                    .map(|bn| bn.running_stats())
                    .collect()
            });
        let draw = cfg.mix.draw(
            cfg.seed,
            self.state.global_step as u64,
            self.rank_world().0 as u64,
            batch.h,
            batch.w,
        );
        let (x, targets) = match draw {
            None => (
                batch_tensor::<B>(batch, &self.device),
                smoothed_targets(&batch.labels, k, cfg.label_smoothing),
            ),
            Some(d) => {
                let mut mixed = batch.clone();
                mix_images(&d, &mut mixed.images, batch.n, batch.h, batch.w);
                let t = mixed_targets(&batch.labels, k, cfg.label_smoothing, d.lam);
                (batch_tensor::<B>(&mixed, &self.device), t)
            }
        };
        let targets = targets_tensor::<B>(targets, batch.n, k, &self.device);
        let logits = match crate::dropout::dropout_mask::<B>(
            &self.state,
            self.rank_world().0,
            batch.n,
            &model,
        ) {
            // Burn's Dropout draws from the backend's process-wide RNG, which a resumed run (or
            // a replica thread next to others) cannot reproduce; this mask is a function of
            // (seed, step, rank).
            Some(mask) => model.fc.forward(model.features(x) * mask),
            None => model.forward(x),
        };
        let loss = soft_cross_entropy(logits.clone(), targets);
        // The loss and logits are read back only once the backward pass is queued: on a GPU a
        // read waits for the device, and reading before the backward would leave it idle while
        // the host queues the backward's first kernels. (So on a GPU `forward` times the
        // queueing and `backward` the device catching up; on the CPU both are exact.)
        let (loss_read, logits_read) = (loss.clone().detach(), logits.detach());
        let t1 = Instant::now();
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let loss_value: f32 = loss_read.into_scalar().elem();
        let host: Vec<f32> = logits_read
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        let correct = host
            .chunks_exact(k)
            .zip(&batch.labels)
            .filter(|(row, &l)| argmax(row) == l as usize)
            .count();
        let t2 = Instant::now();
        self.last_allreduce_bytes = 0;
        // Rank 0's clock decides time-based checkpoints; the flag rides on the all-reduce.
        let minutes = self.state.config.checkpoint_minutes;
        let due_here = self.rank_world().0 == 0
            && minutes
                .is_some_and(|m| self.last_checkpoint_time.elapsed().as_secs_f64() >= m * 60.0);
        // The divergence flag rides on the same all-reduce, so every rank decides alike. So
        // does a stop request, in the checkpoint flag (one float, so the buffer's length and
        // hence every element's reduction order stay as they were): rank 0's clock adds 1, a
        // rank that wants to stop adds 2; summed over the group, > 0 checkpoints and > 1.5
        // (more than the clock alone can give) stops.
        let bad_here = nonfinite(loss_value);
        let mut flags = [
            f32::from(u8::from(due_here)) + 2.0 * f32::from(u8::from(self.stop_wanted)),
            if bad_here { 1.0 } else { 0.0 },
        ];
        self.time_checkpoint_due = due_here || self.stop_wanted;
        self.stop_agreed = self.stop_wanted;
        // Data parallel: the all-reduced gradient is checked too (a finite loss can still have
        // an infinite gradient); alone, a non-finite gradient shows in the next step's loss,
        // and the checkpoint refuses non-finite weights meanwhile.
        let mut grads_finite = true;
        if let Some(sync) = self.parallel.as_mut().filter(|p| p.world() > 1) {
            let world = sync.world() as f32;
            match sync_gradients_with(&model, &mut grads, sync.as_mut(), &self.device, &mut flags) {
                Ok(synced) => {
                    self.last_allreduce_bytes = synced.bytes;
                    grads_finite = synced.grads_finite;
                    // The all-reduce averages: back to the group's sum.
                    let sum = flags[0] * world;
                    self.time_checkpoint_due = sum > 0.5;
                    self.stop_agreed = sum > 1.5;
                }
                Err(e) => {
                    self.model = Some(model);
                    return Err(e);
                }
            }
        }
        let t3 = Instant::now();
        let policy = self.state.config.on_nonfinite;
        let step = self.state.global_step + 1;
        let verdict = match self.guard.decide(
            policy,
            flags[1] > 0.0 || !grads_finite,
            step,
            loss_value as f64,
        ) {
            Ok(v) => v,
            Err(TrainError::NonFinite { step, loss, why }) if !grads_finite => {
                self.model = Some(model);
                return Err(TrainError::NonFinite {
                    step,
                    loss,
                    why: format!("the all-reduced gradient is not finite; {why}"),
                });
            }
            Err(e) => {
                self.model = Some(model);
                return Err(e);
            }
        };
        if verdict != Verdict::Apply {
            // (A rollback replaces the whole model next, statistics included.)
            if let Some(before) = stats_before {
                for (bn, (mean, var)) in model.batchnorms_mut().into_iter().zip(before) {
                    bn.set_running_stats(mean, var);
                }
            }
            self.model = Some(model);
            let timing = StepTiming {
                data: 0.0,
                forward: (t1 - t0).as_secs_f64(),
                backward: (t2 - t1).as_secs_f64(),
                allreduce: (t3 - t2).as_secs_f64(),
                optimizer: 0.0,
            };
            return Ok((loss_value as f64, correct, timing, verdict));
        }
        let ft = &self.state.config.finetune;
        ft.drop_frozen(&model, &mut grads);
        let model = if ft.splits_head() {
            let head = take_head_grads(&model, &mut grads);
            let model = self.optim.step(lr * ft.backbone_lr_scale, model, grads);
            self.optim.step(lr, model, head)
        } else {
            self.optim.step(lr, model, grads)
        };
        self.model = Some(model);
        let t4 = Instant::now();
        let timing = StepTiming {
            data: 0.0,
            forward: (t1 - t0).as_secs_f64(),
            backward: (t2 - t1).as_secs_f64(),
            allreduce: (t3 - t2).as_secs_f64(),
            optimizer: (t4 - t3).as_secs_f64(),
        };
        Ok((loss_value as f64, correct, timing, verdict))
    }

    /// Evaluates the current model on the test split (None when the split is empty).
    pub fn evaluate_test(&self) -> Option<EvalReport> {
        self.eval_counts().map(|c| c.report(&self.test.classes))
    }

    /// Exact counts over this rank's slice of the test split: indices `rank, rank + world, ...`
    /// (disjoint and unpadded, so the ranks' counts sum to the whole split).
    fn eval_counts(&self) -> Option<EvalCounts> {
        if self.test.is_empty() {
            return None;
        }
        let cfg = &self.state.config;
        let (rank, world) = self.rank_world();
        let model = self.model().valid();
        let indices: Vec<usize> = (rank..self.test.len()).step_by(world).collect();
        Some(evaluate(
            &model,
            self.test.clone(),
            indices,
            self.norm,
            cfg.eval_batch_size,
            cfg.loader_workers,
            &self.device,
        ))
    }

    /// Writes a checkpoint of the current state into `<out>/checkpoints` (no-op without `--out`).
    ///
    /// A failed write (full or read-only disk) is retried once, then reported to the observer,
    /// logged and listed in the summary, and training goes on (the write is atomic, so earlier
    /// checkpoints are untouched) unless too many failed in a row (`saves.rs`).
    pub fn checkpoint(&mut self, obs: &mut dyn TrainObserver) -> Result<(), TrainError> {
        // Data parallel: every rank takes part (the policy is a function of the step, so all
        // ranks get here together); the saved state must stand for the whole group. Only rank 0
        // has an output directory.
        if self.peers().is_some() {
            self.sync_replicas()?;
            self.pool_epoch_sums()?;
        }
        // On every rank, so all ranks agree whether the end of `fit` still needs one.
        self.checkpointed_at = Some(self.state.global_step);
        self.last_checkpoint_time = Instant::now();
        self.write_checkpoint_now(obs)?;
        self.take_snapshot();
        Ok(())
    }

    /// `on_nonfinite = rollback`: remembers the current state (at the start of `fit`, at every
    /// checkpoint and at every epoch's end, which every rank reaches at the same step).
    fn take_snapshot(&mut self) {
        if self.state.config.on_nonfinite != NonFinitePolicy::Rollback {
            return;
        }
        if let Some(model) = &self.model {
            self.snapshot = Some(Snapshot {
                model: model.clone(),
                optim: self.optim.clone(),
                state: self.state.clone(),
                checkpointed_at: self.checkpointed_at,
                bn_synced_at: self.bn_synced_at,
            });
        }
    }

    /// Returns to the snapshot after step `bad` was not finite, and passes over the batches up
    /// to and including that step when training goes on.
    fn roll_back(&mut self, bad: usize) -> Result<(), TrainError> {
        let snap = self.snapshot.as_ref().ok_or_else(|| {
            TrainError::Config("on_nonfinite = rollback without a state to return to".into())
        })?;
        self.model = Some(snap.model.clone());
        self.optim = snap.optim.clone();
        self.state = snap.state.clone();
        self.checkpointed_at = snap.checkpointed_at;
        self.bn_synced_at = snap.bn_synced_at;
        let back_to = self.state.global_step;
        self.skip_until = bad;
        tracing::warn!(
            step = bad,
            back_to,
            rollbacks = self.guard.rollbacks,
            "non-finite step: rolled back to the newest checkpoint's state; steps {}..={bad} pass over their batches (on_nonfinite = rollback)",
            back_to + 1
        );
        Ok(())
    }

    /// Writes this replica's state as a checkpoint without talking to the other ranks (no-op
    /// without an output directory): the most advanced survivor of a lost worker heals the
    /// others from it.
    pub fn write_checkpoint_now(&mut self, obs: &mut dyn TrainObserver) -> Result<(), TrainError> {
        let Some(out) = &self.out else { return Ok(()) };
        // A finite loss can hide an infinite gradient (caught by the next step's loss, or at
        // once in a data-parallel run): such weights are never saved, so the newest checkpoint
        // always holds finite ones.
        if !crate::guard::weights_finite(&self.model().valid()) {
            return Err(TrainError::NonFinite {
                step: self.state.global_step,
                loss: self.last_loss,
                why: "the weights after this step are not finite (its gradient was not); \
                      its checkpoint was not written"
                    .into(),
            });
        }
        let root = out.join("checkpoints");
        let started = Instant::now();
        let model = self.model().clone();
        let info = ManifestInfo {
            world_size: Some(self.rank_world().1),
            config_fingerprint: Some(config_fingerprint(&self.state.config)),
        };
        let (step, epoch) = (self.state.global_step, self.state.epoch);
        let mut attempt = 0;
        let dir = loop {
            attempt += 1;
            let written = write_checkpoint_with(&root, step, epoch, &info, |d| {
                record_io::write::<B, _>(&d.join("model"), model.clone().into_record(), "model")?;
                self.optim.save(&d.join("optim"))?;
                write_json_synced(&d.join("state.json"), &self.state)
            });
            match written {
                Ok(dir) => break dir,
                Err(e) if attempt < SAVE_ATTEMPTS => {
                    tracing::warn!(step, error = %e, "checkpoint failed; retrying once");
                    std::thread::sleep(RETRY_PAUSE);
                }
                Err(e) => {
                    tracing::error!(step, error = %e, "checkpoint failed; earlier checkpoints are intact");
                    obs.on_checkpoint_failed(&e.to_string());
                    return self.saves.failed(step, e.to_string(), &root);
                }
            }
        };
        self.saves.saved();
        prune(&root, self.state.config.keep_checkpoints);
        let info = CheckpointInfo {
            step: self.state.global_step,
            epoch: self.state.epoch,
            seconds: started.elapsed().as_secs_f64(),
            bytes: crate::checkpoint::dir_size(&dir),
        };
        obs.on_checkpoint(&dir, &info);
        self.last_saved = Some((self.state.global_step, dir));
        Ok(())
    }
}

fn check_classes(cfg: &TrainConfig, splits: &Splits) -> Result<(), TrainError> {
    let k = splits.train.classes.len();
    if cfg.model.num_classes != k {
        return Err(TrainError::Config(format!(
            "model.num_classes is {} but {} has {k} classes",
            cfg.model.num_classes, splits.train.name
        )));
    }
    Ok(())
}

fn write_metrics(path: &Path, history: &[EpochRecord]) -> Result<(), TrainError> {
    let mut text = String::new();
    for r in history {
        text.push_str(
            &serde_json::to_string(r).map_err(|e| TrainError::Checkpoint(e.to_string()))?,
        );
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| ckpt_err(path, e))
}
