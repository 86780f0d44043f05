//! Data-parallel hooks: the trainer calls a [`GradSync`] between backward and the optimizer step
//! (all-reduce of the flattened gradients) and before evaluation (BatchNorm statistics). The
//! trait keeps this crate independent of any transport; the worker adapts a collective to it.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use resnet_model::ResNet;

use crate::TrainError;

/// How a replica combines values with its peers.
pub trait GradSync: Send {
    /// This replica's rank.
    fn rank(&self) -> usize;
    /// Number of replicas.
    fn world(&self) -> usize;
    /// Element-wise mean over all replicas, in place. Errors name the peer and the failure.
    fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<(), String>;
    /// Copies `root`'s buffer to every replica.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), String>;
}

struct Collect<'a> {
    grads: &'a mut GradientsParams,
    flat: Vec<f32>,
    entries: Vec<(ParamId, Vec<usize>)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.entries.push((param.id, g.dims().to_vec()));
            self.flat
                .extend(g.into_data().convert::<f32>().iter::<f32>());
        }
    }
}

struct Register<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    flat: &'a [f32],
    entries: &'a [(ParamId, Vec<usize>)],
    next: usize,
    offset: usize,
    device: B::Device,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Register<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some((id, shape)) = self.entries.get(self.next) else {
            return;
        };
        if *id != param.id {
            return;
        }
        let n: usize = shape.iter().product();
        let data = TensorData::new(
            self.flat[self.offset..self.offset + n].to_vec(),
            shape.clone(),
        );
        self.grads
            .register::<B::InnerBackend, D>(param.id, Tensor::from_data(data, &self.device));
        self.offset += n;
        self.next += 1;
    }
}

/// Replaces every gradient by its mean over the replicas with one all-reduce of one flat buffer
/// (parameters in module order, so every rank lays it out identically).
pub fn sync_gradients<B: AutodiffBackend>(
    model: &ResNet<B>,
    grads: &mut GradientsParams,
    sync: &mut dyn GradSync,
    device: &B::Device,
) -> Result<usize, TrainError> {
    sync_gradients_with(model, grads, sync, device, &mut [])
}

/// [`sync_gradients`], averaging `flags` in the same all-reduce: a free way for the ranks to
/// agree on a decision every step (e.g. rank 0's clock saying a checkpoint is due).
pub fn sync_gradients_with<B: AutodiffBackend>(
    model: &ResNet<B>,
    grads: &mut GradientsParams,
    sync: &mut dyn GradSync,
    device: &B::Device,
    flags: &mut [f32],
) -> Result<usize, TrainError> {
    let mut c = Collect {
        grads,
        flat: Vec::new(),
        entries: Vec::new(),
    };
    model.visit(&mut c);
    let Collect {
        grads,
        mut flat,
        entries,
    } = c;
    let grads_len = flat.len();
    flat.extend_from_slice(flags);
    sync.all_reduce_mean(&mut flat)
        .map_err(TrainError::Collective)?;
    flags.copy_from_slice(&flat[grads_len..]);
    flat.truncate(grads_len);
    let mut r = Register::<B> {
        grads,
        flat: &flat,
        entries: &entries,
        next: 0,
        offset: 0,
        device: device.clone(),
    };
    model.visit(&mut r);
    Ok(flat.len() * std::mem::size_of::<f32>())
}

/// Averages BatchNorm running statistics over the replicas (each replica saw its own shard), so
/// that every replica evaluates and checkpoints the same model.
pub fn sync_batchnorm<B: Backend>(
    model: &mut ResNet<B>,
    sync: &mut dyn GradSync,
) -> Result<(), TrainError> {
    let mut flat = Vec::new();
    for bn in model.batchnorms() {
        let (m, v) = bn.running_stats();
        flat.extend(m.into_data().convert::<f32>().iter::<f32>());
        flat.extend(v.into_data().convert::<f32>().iter::<f32>());
    }
    sync.all_reduce_mean(&mut flat)
        .map_err(TrainError::Collective)?;
    let mut offset = 0;
    for bn in model.batchnorms_mut() {
        let c = bn.channels();
        let device = bn.weight.device();
        let take = |o: usize| {
            Tensor::<B, 1>::from_data(TensorData::new(flat[o..o + c].to_vec(), [c]), &device)
        };
        let (m, v) = (take(offset), take(offset + c));
        bn.set_running_stats(m, v);
        offset += 2 * c;
    }
    Ok(())
}

struct Flatten(Vec<f32>);

impl<B: Backend> ModuleVisitor<B> for Flatten {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0
            .extend(param.val().into_data().convert::<f32>().iter::<f32>());
    }
}

struct Unflatten<'a> {
    flat: &'a [f32],
    offset: usize,
}

impl<B: Backend> ModuleMapper<B> for Unflatten<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let (dims, device, grad) = (tensor.dims(), tensor.device(), tensor.is_require_grad());
        let n: usize = dims.iter().product();
        let data = TensorData::new(
            self.flat[self.offset..self.offset + n].to_vec(),
            dims.to_vec(),
        );
        self.offset += n;
        let t = Tensor::<B, D>::from_data(data, &device);
        Param::from_mapped_value(id, if grad { t.require_grad() } else { t }, mapper)
    }
}

/// Makes every replica identical to `root`: parameters and BatchNorm statistics, one broadcast.
/// Needed because replicas that share a process also share the backend's global RNG, so seeding
/// alone does not give them the same initial weights.
pub fn broadcast_model<B: Backend>(
    model: ResNet<B>,
    sync: &mut dyn GradSync,
    root: usize,
) -> Result<ResNet<B>, TrainError> {
    let mut f = Flatten(Vec::new());
    model.visit(&mut f);
    let mut flat = f.0;
    sync.broadcast(&mut flat, root)
        .map_err(TrainError::Collective)?;
    Ok(model.map(&mut Unflatten {
        flat: &flat,
        offset: 0,
    }))
}
