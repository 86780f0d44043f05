//! The training loop: data -> forward -> loss -> backward -> [all-reduce] -> optimizer, with
//! per-epoch evaluation, metrics files and checkpoints that resume bit-exactly. The same loop
//! runs one process (`resnet train`) or one replica of a data-parallel group (a worker).
//!
//! This file holds the `Trainer` type, its construction and `fit`'s loop; the rest is split by
//! purpose into `impl Trainer` blocks: `step.rs` (one step), `finish.rs` (the end of an epoch
//! and of the run), `replicas.rs` (the data-parallel group as a type, `Replicas`, and what it
//! shares besides gradients), `overlap.rs` (the all-reduce overlapped with the backward),
//! `saving.rs` (checkpoints and the rollback snapshot) and `restore.rs` (models and state from
//! the seed or a checkpoint). `fit` stays one function (~190 lines, over this crate's usual
//! size): its exits — `max_steps`, an agreed stop, a rollback, a regroup — share the loop's
//! state, and split apart they would hand that state around in flags.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use resnet_data::{
    num_batches, ImageDataset, Loader, LoaderConfig, Normalization, ShardPlan, Splits, Transform,
};
use resnet_kernels::KernelChoice;
use resnet_model::ResNet;

use crate::checkpoint::FORMAT_VERSION;
use crate::finetune::freeze_batchnorm;
use crate::guard::{Guard, Verdict};
use crate::parallel::{broadcast_model, GradSync};
use crate::saves::SaveLog;
use crate::{AnyOptimizer, BuildOptimizer, ScheduleKind, TrainConfig, TrainError};
use crate::{EpochRecord, StepStats, TrainObserver, TrainState, TrainSummary};

mod finish;
mod overlap;
mod overlap_device;
mod policy;
mod replicas;
mod restore;
mod saving;
mod step;

use policy::CheckpointPolicy;
use replicas::Replicas;
use restore::{check_classes, prepare_out};
pub(crate) use restore::{init_model, run_kernels};
pub use restore::{load_model, load_state};
use saving::Snapshot;

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
    /// The data-parallel group (alone: a group of none).
    replicas: Replicas,
    /// Gradient bytes all-reduced by the last step (for throughput metrics).
    last_allreduce_bytes: usize,
    last_allreduce_saved_bytes: usize,
    /// When to checkpoint, and the last checkpoint's step and time.
    checkpoints: CheckpointPolicy,
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
        let model = freeze_batchnorm(&cfg.finetune, model.set_frozen_batchnorm(cfg.freeze_bn));
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
        let model = freeze_batchnorm(
            &state.config.finetune,
            model.set_frozen_batchnorm(state.config.freeze_bn),
        );
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
            replicas: Replicas::alone(),
            last_allreduce_bytes: 0,
            last_allreduce_saved_bytes: 0,
            checkpoints: CheckpointPolicy::new(Instant::now()),
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
        self.replicas.join(sync);
        self
    }

    /// Replaces the data-parallel group (after the group was re-formed).
    pub fn set_parallel(&mut self, sync: Box<dyn GradSync>) {
        self.replicas.join(sync);
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

    /// This replica's rank and the group's size ((0, 1) alone).
    fn rank_world(&self) -> (usize, usize) {
        (self.replicas.rank(), self.replicas.world())
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
        if self.replicas.peers().is_some() {
            // A copy goes out (tensors are shared, not copied): a failed broadcast leaves this
            // replica's model in place for whoever heals or regroups next.
            let model = self.model().clone();
            let sync = self.replicas.peers().expect("checked above");
            self.model = Some(broadcast_model(model, sync, 0)?);
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
                    allreduce_saved_bytes: self.last_allreduce_saved_bytes,
                    world: self.replicas.world(),
                });
                let step_due = CheckpointPolicy::step_due(&cfg, s.global_step);
                // A finite loss can hide a non-finite gradient (a data-parallel group checks the
                // reduced gradient; alone, the next step's loss shows it). Before anything could
                // save this step's weights, every rank checks them, so all decide alike.
                let saving = step_due
                    || self.checkpoints.time_due
                    || s.batch_in_epoch == spe
                    || s.global_step >= limit
                    || self.stop_agreed
                    || (self.replicas.peers_ref().is_none() && obs.stop_requested());
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
                if step_due || self.checkpoints.time_due {
                    self.checkpoint(obs)?;
                }
                if self.state.global_step >= limit {
                    break;
                }
                // A group stops at the step its all-reduce agreed on, so every rank saves the
                // same state; a process on its own also stops on a request during the step.
                if self.stop_agreed || (self.replicas.peers_ref().is_none() && obs.stop_requested())
                {
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
        self.end_of_run(interrupted, spe, total, obs)
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
}
