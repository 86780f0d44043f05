//! Data-parallel hooks: the trainer calls a [`GradSync`] between backward and the optimizer step
//! (all-reduce of the flattened gradients) and before evaluation (BatchNorm statistics). The
//! trait keeps this crate independent of any transport; the worker adapts a collective to it.

use std::any::Any;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use resnet_model::ResNet;

use crate::{GradWire, TrainError};

/// Why an exchange with the other replicas failed, in the terms its caller decides on: whether
/// re-forming the group can continue the run ([`SyncError::regroup_may_help`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// A peer is lost: it closed its connection, stopped answering, or the exchange was aborted
    /// (the coordinator is re-forming the group). Names the peer.
    #[error("{0}")]
    PeerLost(String),
    /// A peer sent something the protocol does not expect. Names the peer.
    #[error("{0}")]
    Protocol(String),
    /// The coordinator asked for the group to be re-formed before this step's exchange.
    #[error("the coordinator is re-forming the group")]
    Regroup,
    /// This replica left its group (it was asked to stop).
    #[error("left the group")]
    Left,
    /// This replica's own side failed (e.g. reading its gradients off the device): another
    /// group would not fix it.
    #[error("{0}")]
    Local(String),
}

impl SyncError {
    /// Whether re-forming the group (without a lost or misbehaving peer) can continue the run.
    pub fn regroup_may_help(&self) -> bool {
        matches!(self, Self::PeerLost(_) | Self::Protocol(_) | Self::Regroup)
    }
}

/// How a replica combines values with its peers.
pub trait GradSync: Send {
    /// This replica's rank.
    fn rank(&self) -> usize;
    /// Number of replicas.
    fn world(&self) -> usize;
    /// Element-wise mean over all replicas, in place. Errors name the peer and the failure.
    fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<(), SyncError>;
    /// Copies `root`'s buffer to every replica.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), SyncError>;
    /// [`Self::all_reduce_mean`] of a step's gradients (and the flags riding with them), every
    /// transfer in `wire`'s element type. The default has the f32 wire only.
    fn all_reduce_grads_mean(&mut self, buf: &mut [f32], wire: GradWire) -> Result<(), SyncError> {
        match wire {
            GradWire::F32 => self.all_reduce_mean(buf),
            GradWire::Bf16 => Err(SyncError::Local(
                "this gradient sync has no bf16 wire (grad_wire = bf16 needs the TCP ring)".into(),
            )),
        }
    }
    /// Whether [`Self::all_reduce_bucket_mean`] works: the step's gradients can then be
    /// reduced in buckets while the backward pass runs (`overlap`). Default: no.
    fn reduces_buckets(&self) -> bool {
        false
    }
    /// The mean of one bucket of a step's flat gradient buffer (as [`Self::all_reduce_grads_mean`]
    /// would reduce it whole): `bucket` holds elements `offset..offset + bucket.len()` of a
    /// buffer of `total`, and ends bit-identical to what the whole buffer's all-reduce gives
    /// them. Every rank makes the same calls in the same order.
    fn all_reduce_bucket_mean(
        &mut self,
        _bucket: &mut [f32],
        _offset: usize,
        _total: usize,
        _wire: GradWire,
    ) -> Result<(), SyncError> {
        Err(SyncError::Local(
            "this gradient sync cannot reduce buckets (overlap needs the TCP or in-process ring)"
                .into(),
        ))
    }
    /// [`Self::all_reduce_mean`] of a flat `Tensor<B, 1>` (B the trainer's inner backend) where
    /// it lives, without a copy to the host: `flat` is that tensor behind `Any`, since this
    /// trait knows no backend. Replaces it with the mean. `None` when this sync cannot reduce
    /// that tensor type on its device; the trainer then takes the host path.
    fn all_reduce_mean_device(&mut self, _flat: &mut dyn Any) -> Option<Result<(), SyncError>> {
        None
    }
    /// Whether [`Self::start_device_bucket_sum`] takes the trainer's gradient tensors: `probe`
    /// is an empty flat `Tensor<B, 1>` of its inner backend behind `Any`. The overlapped
    /// all-reduce then keeps its buckets on the device. Default: no.
    fn reduces_device_buckets(&mut self, _probe: &dyn Any) -> bool {
        false
    }
    /// Queues the element-wise sum over all replicas of one bucket of a step's gradients (a
    /// flat `Tensor<B, 1>` behind `Any`: elements `offset..` of a buffer of `total`) on its
    /// device and returns without waiting; `bucket` is replaced by the tensor that will hold
    /// the sum, readable once [`Self::finish_device_buckets`] has returned `Ok`. Every rank
    /// makes the same calls in the same order.
    fn start_device_bucket_sum(
        &mut self,
        _bucket: &mut dyn Any,
        _offset: usize,
        _total: usize,
    ) -> Result<(), SyncError> {
        Err(SyncError::Local(
            "this gradient sync cannot reduce device buckets (NCCL with --nccl-buffers device)"
                .into(),
        ))
    }
    /// Waits until every bucket started since the last call is reduced, under the
    /// collective's timeout and abort (a lost peer fails the step here).
    fn finish_device_buckets(&mut self) -> Result<(), SyncError> {
        Ok(())
    }
}

/// Takes the gradients out of `grads` in module order, flattened, still on the device.
struct Collect<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
    entries: Vec<Entry>,
    offset: usize,
}

/// A gradient's parameter, shape and first element in the flat buffer.
pub(crate) type Entry = (ParamId, Vec<usize>, usize);

impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let n = g.shape().num_elements();
            self.entries
                .push((param.id, g.dims().to_vec(), self.offset));
            self.offset += n;
            self.parts.push(g.reshape([n]));
        }
    }
}

/// Puts the slices of the reduced flat tensor back as the gradients (entries in module order).
pub(crate) struct Register<'a, B: AutodiffBackend> {
    pub(crate) grads: &'a mut GradientsParams,
    pub(crate) flat: &'a Tensor<B::InnerBackend, 1>,
    pub(crate) entries: &'a [Entry],
    pub(crate) next: usize,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Register<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some((id, shape, offset)) = self.entries.get(self.next) else {
            return;
        };
        if *id != param.id {
            return;
        }
        let n: usize = shape.iter().product();
        let dims: [usize; D] = match shape.as_slice().try_into() {
            Ok(d) => d,
            Err(_) => return, // unreachable: the entry was made from this parameter
        };
        let g = self.flat.clone().narrow(0, *offset, n).reshape(dims);
        self.grads.register::<B::InnerBackend, D>(param.id, g);
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
    sync_gradients_with(model, grads, sync, device, &mut [], GradWire::F32).map(|s| s.bytes)
}

/// What one gradient sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    /// Gradient bytes all-reduced (in the wire's element type).
    pub bytes: usize,
    /// Bytes the f32 wire would have taken beyond `bytes` (0 on the f32 wire).
    pub saved_bytes: usize,
    /// Whether every element of the all-reduced gradient is finite. A NaN or infinity on any
    /// rank survives the sum, so every rank sees the same answer without another exchange.
    pub grads_finite: bool,
}

/// [`sync_gradients`], averaging `flags` in the same all-reduce: a free way for the ranks to
/// agree on a decision every step (e.g. rank 0's clock saying a checkpoint is due). With the
/// bf16 `wire` the flags are rounded too: small integers (up to 256) stay exact.
pub fn sync_gradients_with<B: AutodiffBackend>(
    model: &ResNet<B>,
    grads: &mut GradientsParams,
    sync: &mut dyn GradSync,
    device: &B::Device,
    flags: &mut [f32],
    wire: GradWire,
) -> Result<Synced, TrainError> {
    let mut c = Collect::<B> {
        grads,
        parts: Vec::new(),
        entries: Vec::new(),
        offset: 0,
    };
    model.visit(&mut c);
    let Collect {
        grads,
        mut parts,
        entries,
        ..
    } = c;
    let grads_len: usize = parts.iter().map(|p| p.dims()[0]).sum();
    if !flags.is_empty() {
        parts.push(Tensor::from_data(
            TensorData::new(flags.to_vec(), [flags.len()]),
            device,
        ));
    }
    if parts.is_empty() {
        return Ok(Synced {
            bytes: 0,
            saved_bytes: 0,
            grads_finite: true,
        });
    }
    // One buffer, one collective call, one transfer each way (not one per parameter).
    let mut flat = Tensor::cat(parts, 0);
    // Only f32 reduces on the device (NCCL); the bf16 wire is the ring's, on the host.
    let on_device = match wire {
        GradWire::F32 => sync.all_reduce_mean_device(&mut flat),
        GradWire::Bf16 => None,
    };
    let grads_finite = match on_device {
        Some(r) => {
            r.map_err(TrainError::Collective)?;
            // x * 0 is 0 for every finite x and NaN for NaN or ±inf, so this sum is 0 exactly
            // when every element is finite (no overflow, unlike a norm). It is read back with
            // the flags: one transfer.
            let zero = (flat.clone().narrow(0, 0, grads_len) * 0.0).sum();
            let mut tail = Vec::with_capacity(2);
            if !flags.is_empty() {
                tail.push(flat.clone().narrow(0, grads_len, flags.len()));
            }
            tail.push(zero);
            let tail = Tensor::cat(tail, 0);
            let tail: Vec<f32> = tail.into_data().convert::<f32>().to_vec().map_err(|e| {
                TrainError::Collective(SyncError::Local(format!(
                    "reading the step flags back: {e:?}"
                )))
            })?;
            flags.copy_from_slice(&tail[..flags.len()]);
            tail[flags.len()] == 0.0
        }
        None => {
            let mut host: Vec<f32> = flat.into_data().convert::<f32>().to_vec().map_err(|e| {
                TrainError::Collective(SyncError::Local(format!(
                    "reading the gradients back: {e:?}"
                )))
            })?;
            sync.all_reduce_grads_mean(&mut host, wire)
                .map_err(TrainError::Collective)?;
            flags.copy_from_slice(&host[grads_len..]);
            let finite = host[..grads_len].iter().all(|v| v.is_finite());
            flat = Tensor::from_data(TensorData::new(host, [grads_len + flags.len()]), device);
            finite
        }
    };
    let mut r = Register::<B> {
        grads,
        flat: &flat,
        entries: &entries,
        next: 0,
    };
    model.visit(&mut r);
    Ok(Synced {
        bytes: grads_len * wire.bytes_per_element(),
        saved_bytes: grads_len * (std::mem::size_of::<f32>() - wire.bytes_per_element()),
        grads_finite,
    })
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
