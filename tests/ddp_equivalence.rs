//! The data-parallel correctness property: N replicas with per-replica batch b take the same step
//! as one process with batch N*b. It holds exactly (up to float summation order) when BatchNorm
//! uses frozen statistics, because then every image's gradient is independent of its batch.

use std::time::Duration;

use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use resnet_collective::memory::MemoryRing;
use resnet_data::DataConfig;
use resnet_train::{Quiet, TrainConfig, Trainer};
use resnet_worker::CollectiveSync;

type B = Autodiff<Flex>;

fn cfg(batch: usize) -> TrainConfig {
    let mut c = TrainConfig {
        batch_size: batch,
        epochs: 1,
        max_steps: Some(3),
        seed: 5,
        freeze_bn: true,
        eval_each_epoch: false,
        loader_workers: 1,
        ..Default::default()
    };
    c.model.width = 4;
    c.optim.lr = 0.1;
    c.data = DataConfig {
        train_limit: Some(96),
        test_limit: Some(8),
        ..Default::default()
    };
    c
}

fn params(model: &resnet_model::ResNet<Flex>) -> Vec<f32> {
    struct V(Vec<f32>);
    impl burn::module::ModuleVisitor<Flex> for V {
        fn visit_float<const D: usize>(
            &mut self,
            p: &burn::module::Param<burn::tensor::Tensor<Flex, D>>,
        ) {
            self.0.extend(p.val().into_data().iter::<f32>());
        }
    }
    let mut v = V(Vec::new());
    model.visit(&mut v);
    v.0
}

fn train(world: usize, batch: usize) -> Vec<Vec<f32>> {
    let rings = MemoryRing::group(world, Duration::from_secs(60));
    let handles: Vec<_> = rings
        .into_iter()
        .map(|ring| {
            std::thread::spawn(move || {
                let c = cfg(batch);
                let splits = c.data.load(c.seed, &mut |_, _| {}).expect("data");
                let mut t = Trainer::<B>::new(c, splits, Default::default(), None)
                    .expect("trainer")
                    .with_parallel(Box::new(CollectiveSync(Box::new(ring))));
                t.fit(&mut Quiet).expect("fit");
                params(&burn::module::AutodiffModule::valid(t.model()))
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect()
}

#[test]
fn n_replicas_with_batch_b_equal_one_with_batch_nb() {
    let single = train(1, 16).remove(0);
    let start = {
        let c = cfg(16);
        let splits = c.data.load(c.seed, &mut |_, _| {}).expect("data");
        let t = Trainer::<B>::new(c, splits, Default::default(), None).expect("trainer");
        params(&burn::module::AutodiffModule::valid(t.model()))
    };
    let moved = single
        .iter()
        .zip(&start)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        moved > 1e-3,
        "training did not change the weights ({moved})"
    );
    for world in [2, 4] {
        let replicas = train(world, 16 / world);
        for r in &replicas[1..] {
            assert_eq!(r, &replicas[0], "replicas differ (world {world})");
        }
        let diff = replicas[0]
            .iter()
            .zip(&single)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff < 1e-4,
            "world {world} x batch {} differs from batch 16 by {diff} (moved {moved})",
            16 / world
        );
    }
}
