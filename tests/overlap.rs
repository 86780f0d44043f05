//! The overlapped gradient all-reduce (#21): buckets reduced while the backward pass runs must
//! give exactly what one all-reduce after it gives — every replica, every step, both wires —
//! and a peer lost in the middle of a bucket must fail the step as before, model untouched.
//! (Processes over TCP: `cluster.rs`.)

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Distribution, Tensor, TensorData, TensorMetadata, TensorPrimitive};
use resnet_collective::memory::MemoryRing;
use resnet_collective::Wire;
use resnet_data::DatasetKind;
use resnet_kernels::tap::{node_id, with_tap};
use resnet_kernels::{CpuBn, KernelChoice};
use resnet_train::{
    param_hash, GradSync, GradWire, Quiet, SyncError, TrainConfig, TrainError, Trainer,
};
use resnet_worker::CollectiveSync;

type B = Autodiff<Flex>;

fn cfg(overlap: bool, bucket_mb: f64, wire: GradWire) -> TrainConfig {
    let mut c = TrainConfig {
        batch_size: 8,
        epochs: 1,
        max_steps: Some(3),
        seed: 9,
        eval_each_epoch: false,
        loader_workers: 1,
        overlap,
        bucket_mb,
        grad_wire: wire,
        ..Default::default()
    };
    c.model.width = 4;
    c.optim.lr = 0.1;
    c.data.dataset = DatasetKind::Synthetic;
    c.data.train_limit = Some(48);
    c.data.test_limit = Some(8);
    c
}

/// Every collective call a replica made: (offset, length, total) of each bucket, and the
/// number of whole-buffer gradient all-reduces.
#[derive(Default)]
struct Calls {
    buckets: Vec<(usize, usize, usize)>,
    flat: usize,
}

/// A ring end that records its calls.
struct Recording {
    inner: CollectiveSync,
    calls: Arc<Mutex<Calls>>,
    /// Fail the bucket call with this index, as a lost peer (None: never).
    fail_at: Option<usize>,
    /// Take the trainer's buckets as device tensors (`Tensor<Flex, 1>`), as NCCL with device
    /// buffers does, and sum each through the ring (the CPU stand-in for NCCL's queued sums).
    device: bool,
}

impl Recording {
    fn new(
        ring: MemoryRing,
        calls: Arc<Mutex<Calls>>,
        fail_at: Option<usize>,
        device: bool,
    ) -> Self {
        Self {
            inner: CollectiveSync(Box::new(ring)),
            calls,
            fail_at,
            device,
        }
    }

    /// Records a bucket call; the lost peer when it is the one to fail.
    fn record(&self, offset: usize, len: usize, total: usize) -> Result<(), SyncError> {
        let k = {
            let mut c = self.calls.lock().expect("calls");
            c.buckets.push((offset, len, total));
            c.buckets.len() - 1
        };
        if self.fail_at == Some(k) {
            return Err(SyncError::PeerLost(
                "rank 0 disconnected: connection reset by peer 10.0.0.9:7070".into(),
            ));
        }
        Ok(())
    }
}

impl GradSync for Recording {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world(&self) -> usize {
        self.inner.world()
    }
    fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<(), SyncError> {
        self.inner.all_reduce_mean(buf)
    }
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), SyncError> {
        self.inner.broadcast(buf, root)
    }
    fn all_reduce_grads_mean(&mut self, buf: &mut [f32], wire: GradWire) -> Result<(), SyncError> {
        self.calls.lock().expect("calls").flat += 1;
        self.inner.all_reduce_grads_mean(buf, wire)
    }
    fn reduces_buckets(&self) -> bool {
        !self.device && self.inner.reduces_buckets()
    }
    fn all_reduce_bucket_mean(
        &mut self,
        bucket: &mut [f32],
        offset: usize,
        total: usize,
        wire: GradWire,
    ) -> Result<(), SyncError> {
        self.record(offset, bucket.len(), total)?;
        self.inner
            .all_reduce_bucket_mean(bucket, offset, total, wire)
    }
    fn reduces_device_buckets(&mut self, probe: &dyn Any) -> bool {
        self.device && probe.is::<Tensor<Flex, 1>>()
    }
    fn start_device_bucket_sum(
        &mut self,
        bucket: &mut dyn Any,
        offset: usize,
        total: usize,
    ) -> Result<(), SyncError> {
        let t = bucket
            .downcast_mut::<Tensor<Flex, 1>>()
            .expect("the trainer hands over its own tensors");
        self.record(offset, t.dims()[0], total)?;
        let mut v: Vec<f32> = t.clone().into_data().to_vec().expect("f32");
        self.inner
            .0
            .all_reduce_sum_bucket(&mut v, offset, total, Wire::F32)
            .map_err(resnet_worker::sync_error)?;
        let n = v.len();
        *t = Tensor::from_data(TensorData::new(v, [n]), &Default::default());
        Ok(())
    }
}

/// `world` replicas over the in-memory ring: each one's parameter hash and recorded calls
/// (`device`: the buckets as device tensors, see [`Recording`]).
fn train(world: usize, c: &TrainConfig, device: bool) -> Vec<(String, Calls)> {
    let rings = MemoryRing::group(world, Duration::from_secs(60));
    let handles: Vec<_> = rings
        .into_iter()
        .map(|ring| {
            let c = c.clone();
            std::thread::spawn(move || {
                let splits = c.data.load(c.seed, &mut |_, _| {}).expect("data");
                let calls = Arc::new(Mutex::new(Calls::default()));
                let sync = Recording::new(ring, calls.clone(), None, device);
                let mut t = Trainer::<B>::new(c, splits, Default::default(), None)
                    .expect("trainer")
                    .with_parallel(Box::new(sync));
                t.fit(&mut Quiet).expect("fit");
                let calls = std::mem::take(&mut *calls.lock().expect("calls"));
                (param_hash(t.model()), calls)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("replica thread"))
        .collect()
}

#[test]
fn buckets_reduced_during_the_backward_equal_one_all_reduce_after_it_bit_for_bit() {
    for wire in [GradWire::F32, GradWire::Bf16] {
        for world in [2, 3] {
            let flat = train(world, &cfg(false, 25.0, wire), false);
            // 0.002 MB = 500 f32: a width-4 ResNet-18 (~44k gradients) cuts into many buckets.
            let buckets = train(world, &cfg(true, 0.002, wire), false);
            let case = format!("world {world}, {} wire", wire.name());
            check_overlapped(&case, &flat, &buckets);
        }
    }
}

/// The device-bucket path (`overlap_device.rs`, NCCL's on a GPU) with the buckets summed
/// through the ring: the same calls, and the same bits, as the host buckets and the flat
/// all-reduce.
#[test]
fn device_buckets_equal_one_all_reduce_after_the_backward_bit_for_bit() {
    for world in [2, 3] {
        let flat = train(world, &cfg(false, 25.0, GradWire::F32), true);
        let buckets = train(world, &cfg(true, 0.002, GradWire::F32), true);
        check_overlapped(&format!("device buckets, world {world}"), &flat, &buckets);
    }
}

/// Every replica of both runs ends with the same parameters; the overlapped one made no
/// whole-buffer all-reduce, and per step its buckets ran from the classifier's backwards,
/// contiguous, covering the buffer, then the classifier's, then the flags.
fn check_overlapped(case: &str, flat: &[(String, Calls)], buckets: &[(String, Calls)]) {
    {
        {
            for (hash, _) in flat.iter().chain(buckets) {
                assert_eq!(hash, &flat[0].0, "{case}: overlap changed the run");
            }
            let (off, on) = (&flat[0].1, &buckets[0].1);
            assert!(
                off.flat >= 2 && off.buckets.is_empty(),
                "{case}: overlap off"
            );
            assert_eq!(
                on.flat, 0,
                "{case}: overlap on still all-reduced the whole buffer"
            );
            // Per step: buckets from the classifier's backwards, contiguous, covering the
            // buffer; then the classifier's (the buffer's end), then the flags (2 floats).
            let per_step = on.buckets.len() / off.flat;
            assert!(per_step > 10, "{case}: only {per_step} buckets a step");
            for step in on.buckets.chunks(per_step) {
                let total = step[0].2;
                let (flags, grads) = step.split_last().expect("buckets");
                assert_eq!(*flags, (total - 2, 2, total), "{case}: flags");
                let (fc, body) = grads.split_last().expect("buckets");
                assert_eq!(fc.0 + fc.1, total - 2, "{case}: the classifier's bucket");
                let mut end = fc.0;
                for &(offset, len, t) in body {
                    assert_eq!((offset + len, t), (end, total), "{case}: {step:?}");
                    end = offset;
                }
                assert_eq!(end, 0, "{case}: the buckets do not cover the buffer");
            }
        }
    }
}

#[test]
fn a_peer_lost_in_the_middle_of_the_buckets_fails_the_step_and_keeps_the_model() {
    lose_a_peer_mid_bucket(false);
}

#[test]
fn a_peer_lost_in_the_middle_of_the_device_buckets_fails_the_step_and_keeps_the_model() {
    lose_a_peer_mid_bucket(true);
}

fn lose_a_peer_mid_bucket(device: bool) {
    let c = cfg(true, 0.002, GradWire::F32);
    let splits = c.data.load(c.seed, &mut |_, _| {}).expect("data");
    // A one-rank "group" of two whose ring is the identity would hide nothing: use a real pair
    // and fail rank 1's fifth bucket call; rank 0 sees the peer go (its ring end is dropped).
    let mut rings = MemoryRing::group(2, Duration::from_secs(5));
    let r1 = rings.pop().expect("rank 1");
    let r0 = rings.pop().expect("rank 0");
    let peer = std::thread::spawn({
        let c = c.clone();
        let splits = splits.clone();
        move || {
            let calls = Arc::new(Mutex::new(Calls::default()));
            let mut t = Trainer::<B>::new(c, splits, Default::default(), None)
                .expect("trainer")
                .with_parallel(Box::new(Recording::new(r0, calls, None, device)));
            t.fit(&mut Quiet).map(|_| ())
        }
    });
    let calls = Arc::new(Mutex::new(Calls::default()));
    let mut t = Trainer::<B>::new(c, splits, Default::default(), None)
        .expect("trainer")
        .with_parallel(Box::new(Recording::new(r1, calls.clone(), Some(4), device)));
    let before = param_hash(t.model());
    match t.fit(&mut Quiet) {
        Err(TrainError::Collective(e)) => assert!(
            e.regroup_may_help() && e.to_string().contains("10.0.0.9:7070"),
            "{e}"
        ),
        other => panic!("expected a lost peer, got {other:?}"),
    }
    assert_eq!(
        param_hash(t.model()),
        before,
        "a failed step changed the model"
    );
    assert_eq!(t.state().global_step, 0);
    assert_eq!(
        calls.lock().expect("calls").buckets.len(),
        5,
        "reduced on after the failure"
    );
    drop(t); // rank 1's ring end goes: rank 0's pending bucket fails too
    match peer.join().expect("rank 0 thread") {
        Err(TrainError::Collective(e)) => assert!(e.regroup_may_help(), "{e}"),
        other => panic!("rank 0: expected a lost peer, got {other:?}"),
    }
}

/// Parameters' graph nodes and their gradients after `grads`.
struct Final<'a> {
    grads: &'a <B as AutodiffBackend>::Gradients,
    out: Vec<(String, Option<burn::backend::autodiff::NodeId>, Vec<f32>)>,
}

impl ModuleVisitor<B> for Final<'_> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        let t = p.val();
        if !t.is_require_grad() {
            return; // BatchNorm's running statistics
        }
        let shape = format!("{:?}", t.dims());
        let g = t
            .grad(self.grads)
            .unwrap_or_else(|| panic!("{shape}: no gradient"));
        self.out
            .push((shape, node_id(&t), g.into_data().iter::<f32>().collect()));
    }
}

#[test]
fn the_kernels_announce_every_gradient_they_compute_as_final() {
    announce_every_gradient(KernelChoice::default());
}

/// Burn's BatchNorm composition (`RESNET_BN=burn`, `--cuda-bn burn`): its gamma and beta pass
/// through gradient taps (identity nodes), so they are announced too.
#[test]
fn the_generic_batchnorm_announces_through_taps() {
    announce_every_gradient(KernelChoice {
        cpu_bn: CpuBn::Burn,
        ..KernelChoice::default()
    });
}

fn announce_every_gradient(kernels: KernelChoice) {
    let c = cfg(true, 25.0, GradWire::F32);
    let splits = c.data.load(c.seed, &mut |_, _| {}).expect("data");
    let t = Trainer::<B>::new(c, splits, Default::default(), None)
        .expect("trainer")
        .with_kernels(kernels);
    let model = t.model().clone();
    assert_eq!(
        model.kernels.cpu_bn, kernels.cpu_bn,
        "the model runs the kernels asked for"
    );
    let x = Tensor::<B, 4>::random(
        [3, 3, 32, 32],
        Distribution::Normal(0.0, 1.0),
        &Default::default(),
    );
    let loss = model.forward(x).powi_scalar(2).mean();
    let heard: Rc<RefCell<HashMap<u64, Vec<f32>>>> = Rc::default();
    let h = heard.clone();
    let (grads, _) = with_tap(
        Box::new(move |node, grad| {
            let g = grad
                .downcast_ref::<FloatTensor<Flex>>()
                .expect("a Flex gradient")
                .clone();
            let n = g.shape().num_elements();
            let v = Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(g))
                .reshape([n])
                .into_data()
                .iter::<f32>()
                .collect();
            assert!(
                h.borrow_mut().insert(node.value, v).is_none(),
                "announced twice"
            );
        }),
        || loss.backward(),
    );
    let mut f = Final {
        grads: &grads,
        out: Vec::new(),
    };
    model.visit(&mut f);
    let heard = heard.borrow();
    let mut silent = Vec::new();
    for (shape, node, g) in &f.out {
        match heard.get(&node.expect("an autodiff parameter").value) {
            Some(v) => assert!(
                v.iter().zip(g).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{shape}: the announced gradient is not the final one"
            ),
            None => silent.push(shape.as_str()),
        }
    }
    // Every convolution and BatchNorm parameter; on the CPU the classifier is Burn's own
    // Linear (its weight and bias come from the finished backward instead).
    assert!(
        silent.len() == 2 && silent[0].ends_with(", 10]") && silent[1] == "[10]",
        "not announced: {silent:?}"
    );
    assert_eq!(heard.len(), f.out.len() - 2);
}
