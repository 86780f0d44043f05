//! The single-process training loop: data -> forward -> loss -> backward -> optimizer, with
//! per-epoch evaluation, metrics files and checkpoints that resume bit-exactly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ElementConversion;
use resnet_data::{
    num_batches, Batch, ImageDataset, Loader, LoaderConfig, Normalization, ShardPlan, Splits,
    Transform,
};
use resnet_model::ResNet;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{prune, verify, write_checkpoint, write_json_synced, FORMAT_VERSION};
use crate::eval::{batch_tensor, evaluate};
use crate::loss::{smoothed_targets, soft_cross_entropy, targets_tensor};
use crate::metrics::{argmax, EvalReport};
use crate::{param_hash, AnyOptimizer, TrainConfig, TrainError};

/// Seconds spent in each phase of one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    /// Waiting for the loader.
    pub data: f64,
    /// Forward pass and loss.
    pub forward: f64,
    /// Backward pass.
    pub backward: f64,
    /// Optimizer update.
    pub optimizer: f64,
}

impl StepTiming {
    /// Sum of all phases.
    pub fn total(&self) -> f64 {
        self.data + self.forward + self.backward + self.optimizer
    }
}

/// What the loop reports after every step.
#[derive(Debug, Clone)]
pub struct StepStats {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Global steps completed.
    pub step: usize,
    /// Batch index within the epoch just completed (0-based).
    pub batch: usize,
    /// Steps per epoch.
    pub steps_per_epoch: usize,
    /// Training loss of this batch.
    pub loss: f64,
    /// Running accuracy over the epoch so far.
    pub epoch_accuracy: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Images in the batch.
    pub images: usize,
    /// Phase timings.
    pub timing: StepTiming,
}

/// Test-split metrics kept per epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// Top-5 accuracy.
    pub top5: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Macro F1.
    pub macro_f1: f64,
}

impl From<&EvalReport> for EvalSummary {
    fn from(r: &EvalReport) -> Self {
        Self {
            accuracy: r.accuracy,
            top5: r.top5,
            loss: r.loss,
            macro_f1: r.macro_f1,
        }
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch (1-based, as printed).
    pub epoch: usize,
    /// Global steps at the end of the epoch.
    pub step: usize,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Training accuracy over the epoch (augmented images, model in training mode).
    pub train_accuracy: f64,
    /// LR of the epoch's last step.
    pub lr: f64,
    /// Test metrics, when evaluated.
    pub test: Option<EvalSummary>,
    /// Wall-clock seconds of the epoch's training steps.
    pub seconds: f64,
    /// Training images per second over the epoch.
    pub images_per_sec: f64,
}

/// Where a run is; `state.json` in every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Checkpoint format version.
    pub format_version: u32,
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Next batch of that epoch.
    pub batch_in_epoch: usize,
    /// Steps completed.
    pub global_step: usize,
    /// The resolved configuration.
    pub config: TrainConfig,
    /// Completed epochs.
    pub history: Vec<EpochRecord>,
    /// Running sums of the epoch in progress (so a mid-epoch resume reports the same epoch).
    pub epoch_loss_sum: f64,
    /// Correct training predictions so far this epoch.
    pub epoch_correct: u64,
    /// Training images so far this epoch.
    pub epoch_seen: u64,
    /// Training seconds so far this epoch.
    pub epoch_seconds: f64,
}

/// Called by the loop; the CLI draws progress bars with it.
pub trait TrainObserver {
    /// Before the first step: steps per epoch, steps planned in this invocation, step resumed at.
    fn on_start(&mut self, _steps_per_epoch: usize, _last_step: usize, _start_step: usize) {}
    /// After every step.
    fn on_step(&mut self, _s: &StepStats) {}
    /// After every epoch (and its evaluation).
    fn on_epoch(&mut self, _e: &EpochRecord) {}
    /// After a checkpoint is written.
    fn on_checkpoint(&mut self, _dir: &Path) {}
}

/// An observer that does nothing (tests, library use).
pub struct Quiet;
impl TrainObserver for Quiet {}

/// The result of [`Trainer::fit`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Steps completed in total.
    pub steps: usize,
    /// Epochs completed.
    pub epochs_completed: usize,
    /// Per-epoch records.
    pub history: Vec<EpochRecord>,
    /// Test-split evaluation of the final model.
    pub final_eval: Option<EvalReport>,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
    /// [`param_hash`] of the final model.
    pub param_hash: String,
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
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

/// Reads `state.json` of a verified checkpoint directory.
pub fn load_state(dir: &Path) -> Result<TrainState, TrainError> {
    verify(dir)?;
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
    let state: TrainState = serde_json::from_str(&text)
        .map_err(|e| TrainError::Checkpoint(format!("{}: malformed state: {e}", path.display())))?;
    Ok(state)
}

/// Loads the model stored in a checkpoint directory onto any backend (for `resnet eval`).
pub fn load_model<B: burn::tensor::backend::Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(ResNet<B>, TrainState), TrainError> {
    let state = load_state(dir)?;
    let model = state
        .config
        .model
        .init::<B>(device)
        .map_err(|e| TrainError::Config(e.to_string()))?;
    let model = model
        .load_file(dir.join("model"), &recorder(), device)
        .map_err(|e| {
            TrainError::Checkpoint(format!(
                "{}: cannot read model: {e}",
                dir.join("model.mpk").display()
            ))
        })?;
    Ok((model, state))
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
            std::fs::create_dir_all(o)
                .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", o.display())))?;
            write_json_synced(&o.join("config.json"), &cfg)?;
        }
        B::seed(&device, cfg.seed);
        let model = cfg
            .model
            .init::<B>(&device)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        // Parameters initialise lazily on first read; read them all now, in a fixed order, so the
        // weights depend only on the seed (and clones of the model share them).
        let _ = param_hash(&model);
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
        let optim = state
            .config
            .optim
            .init::<B>()
            .load(&dir.join("optim"), &device)?;
        if let Some(o) = &out {
            std::fs::create_dir_all(o)
                .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", o.display())))?;
            write_json_synced(&o.join("config.json"), &state.config)?;
        }
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
        Self {
            device,
            model: Some(model),
            optim,
            state,
            train: Arc::new(splits.train),
            test: Arc::new(splits.test),
            norm: splits.norm,
            out,
            last_saved: None,
        }
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

    /// Steps per epoch (partial last batches are dropped in training).
    pub fn steps_per_epoch(&self) -> usize {
        num_batches(self.train.len(), self.state.config.batch_size, true)
    }

    /// Trains until `epochs` are done or `max_steps` is reached, then evaluates and checkpoints.
    pub fn fit(&mut self, obs: &mut dyn TrainObserver) -> Result<TrainSummary, TrainError> {
        let cfg = self.state.config.clone();
        let spe = self.steps_per_epoch();
        if spe == 0 {
            return Err(TrainError::Config(format!(
                "{} has {} images, fewer than one batch of {}",
                self.train.name,
                self.train.len(),
                cfg.batch_size
            )));
        }
        let total = cfg.epochs * spe;
        let limit = cfg.max_steps.unwrap_or(usize::MAX).min(total);
        obs.on_start(spe, limit, self.state.global_step);
        let loader_cfg = LoaderConfig {
            batch_size: cfg.batch_size,
            workers: cfg.loader_workers,
            prefetch: 2,
            drop_last: true,
        };
        while self.state.epoch < cfg.epochs && self.state.global_step < limit {
            let epoch = self.state.epoch;
            let indices = ShardPlan::single(cfg.seed, epoch as u64, true).indices(self.train.len());
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
            for batch in loader {
                let data = waited.elapsed().as_secs_f64();
                let lr = cfg
                    .schedule
                    .lr(cfg.optim.lr, self.state.global_step, spe, total);
                let (loss, correct, mut timing) = self.train_step(&batch, lr, cfg.label_smoothing);
                timing.data = data;
                let s = &mut self.state;
                s.global_step += 1;
                s.batch_in_epoch += 1;
                s.epoch_loss_sum += loss * batch.n as f64;
                s.epoch_correct += correct as u64;
                s.epoch_seen += batch.n as u64;
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
                });
                if cfg
                    .checkpoint_steps
                    .is_some_and(|n| n > 0 && s.global_step.is_multiple_of(n))
                {
                    self.checkpoint(obs)?;
                }
                if self.state.global_step >= limit {
                    break;
                }
                waited = Instant::now();
            }
            if self.state.batch_in_epoch < spe {
                break; // stopped by max_steps inside the epoch
            }
            self.finish_epoch(&cfg, spe, total, obs)?;
        }
        let final_eval = self.evaluate_test();
        if self.last_saved.as_ref().map(|(s, _)| *s) != Some(self.state.global_step) {
            self.checkpoint(obs)?;
        }
        let summary = TrainSummary {
            steps: self.state.global_step,
            epochs_completed: self.state.history.len(),
            history: self.state.history.clone(),
            final_eval,
            checkpoint: self.last_saved.as_ref().map(|(_, p)| p.clone()),
            param_hash: param_hash(&self.model().valid()),
        };
        if let Some(o) = &self.out {
            write_json_synced(&o.join("summary.json"), &summary)?;
        }
        Ok(summary)
    }

    fn finish_epoch(
        &mut self,
        cfg: &TrainConfig,
        spe: usize,
        total: usize,
        obs: &mut dyn TrainObserver,
    ) -> Result<(), TrainError> {
        let test = if cfg.eval_each_epoch {
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
            lr: cfg
                .schedule
                .lr(cfg.optim.lr, s.global_step.saturating_sub(1), spe, total),
            test,
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
        if due || self.state.epoch == cfg.epochs {
            self.checkpoint(obs)?;
        }
        Ok(())
    }

    fn train_step(&mut self, batch: &Batch, lr: f64, smoothing: f64) -> (f64, usize, StepTiming) {
        let k = self.train.classes.len();
        let t0 = Instant::now();
        let model = self.model.take().expect("model present between steps");
        let x = batch_tensor::<B>(batch, &self.device);
        let targets = targets_tensor::<B>(
            smoothed_targets(&batch.labels, k, smoothing),
            batch.n,
            k,
            &self.device,
        );
        let logits = model.forward(x);
        let loss = soft_cross_entropy(logits.clone(), targets);
        let loss_value: f32 = loss.clone().into_scalar().elem();
        let host: Vec<f32> = logits
            .detach()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        let correct = host
            .chunks_exact(k)
            .zip(&batch.labels)
            .filter(|(row, &l)| argmax(row) == l as usize)
            .count();
        let t1 = Instant::now();
        let grads = loss.backward();
        let grads = GradientsParams::from_grads(grads, &model);
        let t2 = Instant::now();
        self.model = Some(self.optim.step(lr, model, grads));
        let t3 = Instant::now();
        let timing = StepTiming {
            data: 0.0,
            forward: (t1 - t0).as_secs_f64(),
            backward: (t2 - t1).as_secs_f64(),
            optimizer: (t3 - t2).as_secs_f64(),
        };
        (loss_value as f64, correct, timing)
    }

    /// Evaluates the current model on the test split (None when the split is empty).
    pub fn evaluate_test(&self) -> Option<EvalReport> {
        if self.test.is_empty() {
            return None;
        }
        let cfg = &self.state.config;
        let model = self.model().valid();
        let counts = evaluate(
            &model,
            self.test.clone(),
            (0..self.test.len()).collect(),
            self.norm,
            cfg.eval_batch_size,
            cfg.loader_workers,
            &self.device,
        );
        Some(counts.report(&self.test.classes))
    }

    /// Writes a checkpoint of the current state into `<out>/checkpoints` (no-op without `--out`).
    pub fn checkpoint(&mut self, obs: &mut dyn TrainObserver) -> Result<(), TrainError> {
        let Some(out) = &self.out else { return Ok(()) };
        let root = out.join("checkpoints");
        let model = self.model();
        let dir = write_checkpoint(&root, self.state.global_step, self.state.epoch, |d| {
            model
                .clone()
                .save_file(d.join("model"), &recorder())
                .map_err(|e| {
                    TrainError::Checkpoint(format!("{}: cannot write model: {e}", d.display()))
                })?;
            self.optim.save(&d.join("optim"))?;
            write_json_synced(&d.join("state.json"), &self.state)
        })?;
        prune(&root, self.state.config.keep_checkpoints);
        obs.on_checkpoint(&dir);
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
    std::fs::write(path, text)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))
}
