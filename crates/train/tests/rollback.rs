//! `on_nonfinite = rollback` in a data-parallel replica: a fake group (world 2, all-reduce the
//! identity) reports "another rank's loss was not finite" at one chosen step. The replica returns
//! to the newest checkpoint's state, passes over the batches up to that step, trains on to the
//! end, and does so deterministically; the whole group takes the same decision because the flag
//! rides on the all-reduce.

use burn::backend::{Autodiff, Flex};
use resnet_data::DatasetKind;
use resnet_train::{GradSync, NonFinitePolicy, Quiet, TrainConfig, TrainError, Trainer};

type B = Autodiff<Flex>;

/// All-reduce is the identity, except that the `poison`-th gradient all-reduce comes back with
/// the non-finite flag raised (the last element of the buffer), as if a peer's loss were NaN.
struct Poisoned {
    poison: Vec<usize>,
    grad_calls: usize,
}

impl GradSync for Poisoned {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        2
    }
    fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<(), resnet_train::SyncError> {
        // Gradient buffers are large; BatchNorm statistics and epoch sums are other calls.
        if buf.len() > 1000 {
            self.grad_calls += 1;
            if self.poison.contains(&self.grad_calls) {
                if let Some(flag) = buf.last_mut() {
                    *flag = 1.0;
                }
            }
        }
        Ok(())
    }
    fn broadcast(&mut self, _buf: &mut [f32], _root: usize) -> Result<(), resnet_train::SyncError> {
        Ok(())
    }
}

fn config(policy: NonFinitePolicy) -> TrainConfig {
    let mut cfg = TrainConfig::default();
    cfg.model.width = 4;
    cfg.batch_size = 8;
    cfg.epochs = 2;
    cfg.eval_each_epoch = false;
    cfg.checkpoint_steps = Some(3);
    cfg.on_nonfinite = policy;
    cfg.data.dataset = DatasetKind::Synthetic;
    // Two ranks: 8 batches of 8 per rank and epoch.
    cfg.data.train_limit = Some(128);
    cfg.data.test_limit = Some(16);
    cfg
}

/// Trains with the given poisoned gradient calls; returns the summary and the calls made.
fn run(
    policy: NonFinitePolicy,
    poison: &[usize],
) -> Result<(resnet_train::TrainSummary, usize), TrainError> {
    let cfg = config(policy);
    let splits = cfg
        .data
        .load(cfg.seed, &mut |_, _| {})
        .expect("synthetic data");
    let out = tempfile::tempdir().expect("tmp");
    let sync = Poisoned {
        poison: poison.to_vec(),
        grad_calls: 0,
    };
    let mut trainer = Trainer::<B>::new(cfg, splits, Default::default(), Some(out.path().into()))
        .expect("trainer")
        .with_parallel(Box::new(sync));
    let summary = trainer.fit(&mut Quiet)?;
    Ok((summary, trainer.state().global_step))
}

#[test]
fn a_rollback_returns_to_the_checkpoint_passes_over_the_bad_window_and_trains_to_the_end() {
    let (calm, _) = run(NonFinitePolicy::Rollback, &[]).expect("undisturbed");
    assert_eq!((calm.steps, calm.rollbacks), (16, 0));
    // The 5th step is "not finite": back to the checkpoint of step 3, steps 4 and 5 pass over
    // their batches, training goes on from step 6 to the end of both epochs.
    let (a, _) = run(NonFinitePolicy::Rollback, &[5]).expect("rolled back and finished");
    assert_eq!((a.steps, a.epochs_completed, a.rollbacks), (16, 2, 1));
    assert_ne!(a.param_hash, calm.param_hash, "the window was not trained");
    // The same decision every time: a group's ranks (and a rerun) end identical.
    let (b, _) = run(NonFinitePolicy::Rollback, &[5]).expect("again");
    assert_eq!(a.param_hash, b.param_hash);
    // Steps 4 and 5 were not trained: the first epoch's record is the mean over 6 steps, so
    // it differs from the undisturbed run's 8.
    assert_ne!(
        a.history[0].train_loss.to_bits(),
        calm.history[0].train_loss.to_bits()
    );
}

#[test]
fn rollbacks_that_do_not_get_past_the_divergence_stop_the_run() {
    // Every gradient all-reduce from the 5th on is "not finite".
    let poison: Vec<usize> = (5..100).collect();
    match run(NonFinitePolicy::Rollback, &poison) {
        Err(TrainError::NonFinite { why, .. }) => assert!(why.contains("rollbacks"), "{why}"),
        other => panic!("expected the run to give up, got {other:?}"),
    }
    // `stop` stops at the first.
    match run(NonFinitePolicy::Stop, &[5]) {
        Err(TrainError::NonFinite { step, .. }) => assert_eq!(step, 5),
        other => panic!("expected a stop at step 5, got {other:?}"),
    }
}

/// `skip-step`: a step whose loss is not finite somewhere in the group is dropped (weights,
/// BatchNorm statistics and the step's metrics untouched) and training goes on; ten in a row
/// stop the run.
#[test]
fn skip_step_drops_the_bad_step_and_gives_up_after_a_streak() {
    let (a, _) = run(NonFinitePolicy::SkipStep, &[5]).expect("skipped and finished");
    assert_eq!((a.steps, a.skipped_steps, a.rollbacks), (16, 1, 0));
    let poison: Vec<usize> = (5..100).collect();
    match run(NonFinitePolicy::SkipStep, &poison) {
        Err(TrainError::NonFinite { step, why, .. }) => {
            assert!(why.contains("in a row"), "{why}");
            assert_eq!(step, 5 + resnet_train::MAX_CONSECUTIVE_SKIPS - 1);
        }
        other => panic!("expected the run to give up, got {other:?}"),
    }
}
