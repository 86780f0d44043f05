//! One training step: batch -> tensors -> forward -> loss -> backward -> all-reduce (with the
//! group's flags) -> divergence verdict -> optimizer, one function per phase; `train_step`
//! strings them together and times them. (An `impl Trainer` split by purpose.) With `overlap`
//! the backward and the all-reduce run together (`overlap.rs`).

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use resnet_data::Batch;
use resnet_model::ResNet;

use super::Trainer;
use crate::argmax;
use crate::eval::batch_tensor;
use crate::finetune::{drop_frozen, take_head_grads};
use crate::guard::{nonfinite, Verdict};
use crate::loss::{smoothed_targets, soft_cross_entropy, targets_tensor};
use crate::mix::{mix_images, mixed_targets};
use crate::parallel::sync_gradients_with;
use crate::StepTiming;
use crate::{NonFinitePolicy, TrainError};

/// What the group agreed in a step's all-reduce.
struct Agreed {
    /// Some rank's loss was not finite.
    loss_nonfinite: bool,
    /// The all-reduced gradient is finite (always true alone: the next loss shows it).
    grads_finite: bool,
}

/// A step's gradients after the all-reduce, and what the step learnt on the way.
struct Reduced {
    grads: GradientsParams,
    loss_value: f32,
    correct: usize,
    /// When the backward pass ended (and the wait for the all-reduce began).
    backward_end: Instant,
    agreed: Agreed,
    /// The collective's own time when it overlapped the backward (None: it did not, and all
    /// of it is the wait).
    communication: Option<std::time::Duration>,
}

/// BatchNorm running statistics to put back when a step is dropped.
type SavedStats<B> = Vec<(Tensor<B, 1>, Tensor<B, 1>)>;

impl<B: AutodiffBackend> Trainer<B> {
    pub(super) fn train_step(
        &mut self,
        batch: &Batch,
        lr: f64,
    ) -> Result<(f64, usize, StepTiming, Verdict), TrainError> {
        let t0 = Instant::now();
        let mut model = self.model.take().expect("model present between steps");
        let stats_before = self.stats_to_restore(&model);
        let (x, targets) = self.inputs(batch);
        let logits = self.forward(&model, x, batch.n);
        let loss = soft_cross_entropy(logits.clone(), targets);
        // The loss and logits are read back only once the backward pass is queued: on a GPU a
        // read waits for the device, and reading before the backward would leave it idle while
        // the host queues the backward's first kernels. (So on a GPU `forward` times the
        // queueing and `backward` the device catching up; on the CPU both are exact.)
        let (loss_read, logits_read) = (loss.clone().detach(), logits.detach());
        let t1 = Instant::now();
        let reduced = match self.backward_and_reduce(&model, loss, loss_read, logits_read, batch) {
            Ok(r) => r,
            Err(e) => {
                self.model = Some(model);
                return Err(e);
            }
        };
        let Reduced {
            grads,
            loss_value,
            correct,
            backward_end: t2,
            agreed,
            communication,
        } = reduced;
        let t3 = Instant::now();
        // Without overlap the all-reduce is all exposed.
        let communication = communication.unwrap_or(t3 - t2);
        let verdict = match self.verdict(&agreed, loss_value) {
            Ok(v) => v,
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
                communication: communication.as_secs_f64(),
            };
            return Ok((loss_value as f64, correct, timing, verdict));
        }
        self.model = Some(self.apply_gradients(model, grads, lr));
        let t4 = Instant::now();
        let timing = StepTiming {
            data: 0.0,
            forward: (t1 - t0).as_secs_f64(),
            backward: (t2 - t1).as_secs_f64(),
            allreduce: (t3 - t2).as_secs_f64(),
            optimizer: (t4 - t3).as_secs_f64(),
            communication: communication.as_secs_f64(),
        };
        Ok((loss_value as f64, correct, timing, verdict))
    }

    /// Backward pass and gradient all-reduce: one after the other, or overlapped
    /// (`overlap.rs`) where the group can.
    fn backward_and_reduce(
        &mut self,
        model: &ResNet<B>,
        loss: Tensor<B, 1>,
        loss_read: Tensor<B, 1>,
        logits_read: Tensor<B, 2>,
        batch: &Batch,
    ) -> Result<Reduced, TrainError> {
        let Some(layout) = self.overlap_layout(model) else {
            let mut grads = GradientsParams::from_grads(loss.backward(), model);
            let loss_value: f32 = loss_read.into_scalar().elem();
            let correct = self.count_correct(logits_read, batch);
            let backward_end = Instant::now();
            let agreed = self.all_reduce(model, &mut grads, loss_value)?;
            return Ok(Reduced {
                grads,
                loss_value,
                correct,
                backward_end,
                agreed,
                communication: None,
            });
        };
        let mut read = (0.0, 0);
        let o = self.backward_overlapped(model, loss, layout, |me| {
            let loss_value: f32 = loss_read.into_scalar().elem();
            read = (loss_value, me.count_correct(logits_read, batch));
            me.step_flags(loss_value)
        })?;
        let wire = self.state.config.grad_wire;
        self.last_allreduce_bytes = o.elements * wire.bytes_per_element();
        self.last_allreduce_saved_bytes =
            o.elements * (std::mem::size_of::<f32>() - wire.bytes_per_element());
        Ok(Reduced {
            grads: o.grads,
            loss_value: read.0,
            correct: read.1,
            backward_end: o.backward_end,
            agreed: self.agree(o.flags, o.grads_finite),
            communication: Some(o.communication),
        })
    }

    /// `skip-step` restores the BatchNorm statistics of a dropped step (the forward has
    /// already folded that batch into them): those before it, under that policy only.
    fn stats_to_restore(&self, model: &ResNet<B>) -> Option<SavedStats<B>> {
        (self.state.config.on_nonfinite == NonFinitePolicy::SkipStep).then(|| {
            model
                .batchnorms()
                .iter()
                .map(|bn| bn.running_stats())
                .collect()
        })
    }

    /// Batch -> input and target tensors: Mixup/CutMix when the run draws it for this step
    /// (a function of seed, step and rank), label smoothing.
    fn inputs(&self, batch: &Batch) -> (Tensor<B, 4>, Tensor<B, 2>) {
        let k = self.train.classes.len();
        let cfg = &self.state.config;
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
        (x, targets_tensor::<B>(targets, batch.n, k, &self.device))
    }

    /// The logits, with the run's dropout before the classifier.
    fn forward(&self, model: &ResNet<B>, x: Tensor<B, 4>, n: usize) -> Tensor<B, 2> {
        match crate::dropout::dropout_mask::<B>(&self.state, self.rank_world().0, n, model) {
            // Burn's Dropout draws from the backend's process-wide RNG, which a resumed run (or
            // a replica thread next to others) cannot reproduce; this mask is a function of
            // (seed, step, rank).
            Some(mask) => model.fc.forward(model.features(x) * mask),
            None => model.forward(x),
        }
    }

    /// Correct top-1 predictions among the batch's (detached) logits.
    fn count_correct(&self, logits: Tensor<B, 2>, batch: &Batch) -> usize {
        let k = self.train.classes.len();
        let host: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        host.chunks_exact(k)
            .zip(&batch.labels)
            .filter(|(row, &l)| argmax(row) == l as usize)
            .count()
    }

    /// Data parallel: the mean gradient over the group, and with it the step's flags (rank 0's
    /// checkpoint clock, stop requests, non-finite losses), so every rank decides alike. Alone:
    /// only the flags of this process.
    fn all_reduce(
        &mut self,
        model: &ResNet<B>,
        grads: &mut GradientsParams,
        loss_value: f32,
    ) -> Result<Agreed, TrainError> {
        self.last_allreduce_bytes = 0;
        self.last_allreduce_saved_bytes = 0;
        let mut flags = self.step_flags(loss_value);
        // Data parallel: the all-reduced gradient is checked too (a finite loss can still have
        // an infinite gradient); alone, a non-finite gradient shows in the next step's loss,
        // and the checkpoint refuses non-finite weights meanwhile.
        let mut grads_finite = true;
        if let Some(sync) = self.replicas.peers() {
            let synced = sync_gradients_with(
                model,
                grads,
                sync,
                &self.device,
                &mut flags,
                self.state.config.grad_wire,
            )?;
            self.last_allreduce_bytes = synced.bytes;
            self.last_allreduce_saved_bytes = synced.saved_bytes;
            grads_finite = synced.grads_finite;
        }
        Ok(self.agree(flags, grads_finite))
    }

    /// This rank's flags for the step's all-reduce. The divergence flag rides on it, so every
    /// rank decides alike. So does a stop request, in the checkpoint flag (one float, so the
    /// buffer's length and hence every element's reduction order stay as they were): rank 0's
    /// clock adds 1, a rank that wants to stop adds 2; summed over the group, > 0 checkpoints
    /// and > 1.5 (more than the clock alone can give) stops. Sets this rank's own decisions,
    /// which [`Self::agree`] replaces with the group's.
    fn step_flags(&mut self, loss_value: f32) -> [f32; 2] {
        // Rank 0's clock decides time-based checkpoints. (The rank is known while the sync is
        // lent to the overlapped all-reduce: `Replicas` keeps it.)
        let due_here = self.rank_world().0 == 0
            && self
                .checkpoints
                .clock_due(&self.state.config, Instant::now());
        self.checkpoints.time_due = due_here || self.stop_wanted;
        self.stop_agreed = self.stop_wanted;
        [
            f32::from(u8::from(due_here)) + 2.0 * f32::from(u8::from(self.stop_wanted)),
            if nonfinite(loss_value) { 1.0 } else { 0.0 },
        ]
    }

    /// The group's decisions from the all-reduced (averaged) flags; alone, this rank's.
    fn agree(&mut self, flags: [f32; 2], grads_finite: bool) -> Agreed {
        let world = self.replicas.world();
        if world > 1 {
            // The all-reduce averages: back to the group's sum.
            let sum = flags[0] * world as f32;
            self.checkpoints.time_due = sum > 0.5;
            self.stop_agreed = sum > 1.5;
        }
        Agreed {
            loss_nonfinite: flags[1] > 0.0,
            grads_finite,
        }
    }

    /// What the divergence guard makes of the step: apply it, skip it, roll back, or stop.
    fn verdict(&mut self, agreed: &Agreed, loss_value: f32) -> Result<Verdict, TrainError> {
        let policy = self.state.config.on_nonfinite;
        let step = self.state.global_step + 1;
        match self.guard.decide(
            policy,
            agreed.loss_nonfinite || !agreed.grads_finite,
            step,
            loss_value as f64,
        ) {
            Err(TrainError::NonFinite { step, loss, why }) if !agreed.grads_finite => {
                Err(TrainError::NonFinite {
                    step,
                    loss,
                    why: format!("the all-reduced gradient is not finite; {why}"),
                })
            }
            other => other,
        }
    }

    /// The optimizer step; fine-tuning drops frozen parameters' gradients and may give the
    /// backbone a scaled learning rate.
    fn apply_gradients(
        &mut self,
        model: ResNet<B>,
        mut grads: GradientsParams,
        lr: f64,
    ) -> ResNet<B> {
        let ft = &self.state.config.finetune;
        drop_frozen(ft, &model, &mut grads);
        if ft.splits_head() {
            let head = take_head_grads(&model, &mut grads);
            let model = self.optim.step(lr * ft.backbone_lr_scale, model, grads);
            self.optim.step(lr, model, head)
        } else {
            self.optim.step(lr, model, grads)
        }
    }
}
