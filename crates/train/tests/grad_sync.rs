//! The trainer's gradient hand-over (`sync_gradients_with`): every gradient goes out in one flat
//! buffer and comes back to the parameter it came from, through the host path or through a
//! sync that reduces the flat tensor on its device (`GradSync::all_reduce_mean_device`, what
//! NCCL with `--nccl-buffers device` does on CUDA). A fake sync scales by a known factor, so a
//! gradient registered under the wrong parameter, or a skipped path, shows.

use std::any::Any;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use resnet_model::{BuildResNet, ResNet, ResNetConfig};
use resnet_train::{sync_gradients_with, GradSync, GradWire, SyncError, TrainError};

type B = Autodiff<Flex>;
type Inner = Flex;

/// Which path the fake takes for the flat buffer.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Path {
    Host,
    Device,
    DeviceFails,
}

/// "All-reduce" that multiplies by `factor` (a stand-in for the mean over peers that differ).
struct Scale {
    factor: f32,
    path: Path,
    host_calls: usize,
    device_calls: usize,
    /// Calls of the gradient reduce with the bf16 wire.
    bf16_calls: usize,
}

impl Scale {
    fn new(path: Path) -> Self {
        Self {
            factor: 0.5,
            path,
            host_calls: 0,
            device_calls: 0,
            bf16_calls: 0,
        }
    }
}

impl GradSync for Scale {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        2
    }
    fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<(), SyncError> {
        self.host_calls += 1;
        buf.iter_mut().for_each(|v| *v *= self.factor);
        Ok(())
    }
    fn broadcast(&mut self, _buf: &mut [f32], _root: usize) -> Result<(), SyncError> {
        Ok(())
    }
    fn all_reduce_grads_mean(&mut self, buf: &mut [f32], wire: GradWire) -> Result<(), SyncError> {
        if wire == GradWire::Bf16 {
            self.bf16_calls += 1;
        }
        self.all_reduce_mean(buf)
    }
    fn all_reduce_mean_device(&mut self, flat: &mut dyn Any) -> Option<Result<(), SyncError>> {
        match self.path {
            Path::Host => None,
            Path::Device => {
                let t = flat.downcast_mut::<Tensor<Inner, 1>>()?;
                self.device_calls += 1;
                *t = t.clone().mul_scalar(self.factor);
                Some(Ok(()))
            }
            Path::DeviceFails => Some(Err(SyncError::PeerLost("rank 1 went away".into()))),
        }
    }
}

/// Every parameter's gradient, in module order, as host vectors (None: no gradient).
struct Grads<'a> {
    grads: &'a GradientsParams,
    out: Vec<Option<Vec<f32>>>,
}

impl ModuleVisitor<B> for Grads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let g = self.grads.get::<Inner, D>(param.id);
        self.out
            .push(g.map(|g| g.into_data().to_vec::<f32>().expect("f32")));
    }
}

fn grads_of(model: &ResNet<B>, grads: &GradientsParams) -> PerParam {
    let mut v = Grads { grads, out: vec![] };
    model.visit(&mut v);
    v.out
}

/// A tiny ResNet-18 and the gradients of one batch (deterministic: same seed, same input).
fn model_and_grads() -> (ResNet<B>, GradientsParams) {
    let device: burn::tensor::Device<B> = Default::default();
    <B as Backend>::seed(&device, 7);
    let cfg = ResNetConfig {
        width: 4,
        ..ResNetConfig::new(18, 10)
    };
    let model: ResNet<B> = cfg.init(&device).expect("valid config");
    let x = Tensor::<B, 4>::random([2, 3, 8, 8], Distribution::Default, &device);
    let loss = model.forward(x).powi_scalar(2).mean();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    (model, grads)
}

/// Each parameter's gradient (None: not trained), in module order.
type PerParam = Vec<Option<Vec<f32>>>;

/// Gradients before and after a sync through `path` with `wire`, the sync, and the step flags
/// after it; checks the bytes reported (the wire's size of the gradients, the rest saved).
fn synced(path: Path, wire: GradWire) -> (PerParam, PerParam, Scale, Vec<f32>) {
    let (model, mut grads) = model_and_grads();
    let before = grads_of(&model, &grads);
    let mut sync = Scale::new(path);
    let mut flags = vec![4.0, -2.0];
    let device: burn::tensor::Device<B> = Default::default();
    let synced = sync_gradients_with(&model, &mut grads, &mut sync, &device, &mut flags, wire)
        .expect("sync succeeds");
    let n: usize = before.iter().flatten().map(Vec::len).sum();
    let on_wire = wire.bytes_per_element();
    assert_eq!(
        synced.bytes,
        on_wire * n,
        "bytes reported = the gradients' size"
    );
    assert_eq!(synced.saved_bytes, (4 - on_wire) * n, "saved against f32");
    assert!(synced.grads_finite);
    (before, grads_of(&model, &grads), sync, flags)
}

fn assert_scaled(before: &[Option<Vec<f32>>], after: &[Option<Vec<f32>>]) {
    assert_eq!(before.len(), after.len());
    assert!(before.iter().filter(|g| g.is_some()).count() > 20);
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        let (b, a) = match (b, a) {
            (Some(b), Some(a)) => (b, a),
            (None, None) => continue, // BatchNorm statistics: state, not trained
            _ => panic!("parameter {i}: gradient lost or invented by the sync"),
        };
        assert_eq!(b.len(), a.len(), "parameter {i}");
        for (x, y) in b.iter().zip(a) {
            assert_eq!((x * 0.5).to_bits(), y.to_bits(), "parameter {i}");
        }
    }
}

#[test]
fn the_host_path_returns_every_gradient_to_its_parameter() {
    let (before, after, sync, flags) = synced(Path::Host, GradWire::F32);
    assert_eq!(
        (sync.host_calls, sync.device_calls),
        (1, 0),
        "one host call per step"
    );
    assert_scaled(&before, &after);
    assert_eq!(
        flags,
        vec![2.0, -1.0],
        "the step flags ride in the same call"
    );
}

#[test]
fn a_device_sync_reduces_the_flat_tensor_without_the_host_path() {
    let (before, after, sync, flags) = synced(Path::Device, GradWire::F32);
    assert_eq!((sync.host_calls, sync.device_calls), (0, 1));
    assert_scaled(&before, &after);
    assert_eq!(flags, vec![2.0, -1.0]);
}

#[test]
fn a_failing_device_sync_is_a_collective_error() {
    let (model, mut grads) = model_and_grads();
    let mut sync = Scale::new(Path::DeviceFails);
    let device: burn::tensor::Device<B> = Default::default();
    let err = sync_gradients_with(
        &model,
        &mut grads,
        &mut sync,
        &device,
        &mut [],
        GradWire::F32,
    )
    .expect_err("the failure surfaces");
    match err {
        TrainError::Collective(e) => assert_eq!(e, SyncError::PeerLost("rank 1 went away".into())),
        other => panic!("expected a collective error, got {other:?}"),
    }
    assert_eq!(
        sync.host_calls, 0,
        "no silent fallback after a failed device call"
    );
}

/// A peer whose gradient is not finite (here: the fake reduce scales by infinity) shows in the
/// reduced buffer, so every rank learns it from the sync itself, on both paths.
#[test]
fn a_nonfinite_reduced_gradient_is_reported_on_both_paths() {
    for path in [Path::Host, Path::Device] {
        let (model, mut grads) = model_and_grads();
        let mut sync = Scale {
            factor: f32::INFINITY,
            ..Scale::new(path)
        };
        let device: burn::tensor::Device<B> = Default::default();
        let mut flags = vec![0.0, 0.0];
        let synced = sync_gradients_with(
            &model,
            &mut grads,
            &mut sync,
            &device,
            &mut flags,
            GradWire::F32,
        )
        .expect("sync succeeds");
        assert!(!synced.grads_finite, "{path:?}");
    }
}

#[test]
fn the_bf16_wire_takes_the_host_path_even_where_the_device_path_exists() {
    // NCCL (the device path) has no bf16 wire: the gradients must go through the host's ring
    // with the wire named, and the bytes reported are 2 an element, the other 2 saved.
    let (before, after, sync, flags) = synced(Path::Device, GradWire::Bf16);
    assert_eq!(
        (sync.host_calls, sync.device_calls, sync.bf16_calls),
        (1, 0, 1)
    );
    assert_scaled(&before, &after);
    assert_eq!(flags, vec![2.0, -1.0]);
}
