//! A data-parallel replica whose first collective (the initial broadcast of rank 0's weights)
//! fails: `fit` returns the collective error the worker regroups on, and the replica keeps its
//! model. Before, the model was moved into the failed broadcast and the healing that followed
//! panicked with "the model is only absent inside a step".

use burn::backend::{Autodiff, Flex};
use resnet_data::DatasetKind;
use resnet_train::{param_hash, GradSync, Quiet, SyncError, TrainConfig, TrainError, Trainer};

type B = Autodiff<Flex>;

/// A group of two whose broadcast fails until `heal` is set; all-reduce is the identity.
struct Flaky {
    broadcast_fails: bool,
}

impl GradSync for Flaky {
    fn rank(&self) -> usize {
        1
    }
    fn world(&self) -> usize {
        2
    }
    fn all_reduce_mean(&mut self, _buf: &mut [f32]) -> Result<(), SyncError> {
        Ok(())
    }
    fn broadcast(&mut self, _buf: &mut [f32], _root: usize) -> Result<(), SyncError> {
        if self.broadcast_fails {
            Err(SyncError::PeerLost(
                "ring setup: peer 10.0.0.7:7070 closed the connection".into(),
            ))
        } else {
            Ok(())
        }
    }
}

fn config() -> TrainConfig {
    let mut cfg = TrainConfig::default();
    cfg.model.width = 4;
    cfg.batch_size = 8;
    cfg.epochs = 1;
    cfg.max_steps = Some(2);
    cfg.eval_each_epoch = false;
    cfg.data.dataset = DatasetKind::Synthetic;
    cfg.data.train_limit = Some(32);
    cfg.data.test_limit = Some(16);
    cfg
}

#[test]
fn a_failed_initial_broadcast_is_a_collective_error_and_the_replica_keeps_its_model() {
    let cfg = config();
    let splits = cfg
        .data
        .load(cfg.seed, &mut |_, _| {})
        .expect("synthetic data");
    let mut trainer = Trainer::<B>::new(cfg, splits, Default::default(), None)
        .expect("trainer")
        .with_parallel(Box::new(Flaky {
            broadcast_fails: true,
        }));
    let before = param_hash(trainer.model());
    match trainer.fit(&mut Quiet) {
        // A lost peer during the first broadcast: the kind the worker regroups on.
        Err(TrainError::Collective(e)) => {
            assert!(
                e.regroup_may_help() && e.to_string().contains("10.0.0.7:7070"),
                "{e}"
            )
        }
        other => panic!("expected a collective error, got {other:?}"),
    }
    // The model is still there (this read panicked before) and unchanged.
    assert_eq!(param_hash(trainer.model()), before);
    assert_eq!(trainer.state().global_step, 0);
    // The re-formed group's broadcast works: the same replica trains on.
    trainer.set_parallel(Box::new(Flaky {
        broadcast_fails: false,
    }));
    let summary = trainer.fit(&mut Quiet).expect("trains after the regroup");
    assert_eq!(summary.steps, 2);
}
