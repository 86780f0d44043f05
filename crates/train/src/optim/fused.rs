//! The fused optimizer: each parameter updated in one pass ([`resnet_kernels::optim`]) instead
//! of Burn's chain of tensor ops, in the same arithmetic. On the CPU the state of every
//! parameter lives in one flat host buffer and the update runs in place (same bits:
//! `tests/fused_optim.rs` and the golden hashes); on the plain CUDA backend each parameter's
//! state is a device tensor and the update is one kernel launch (Burn's arithmetic up to fused
//! multiply-adds).
//!
//! The state converts to and from Burn's optimizer records (`optim.mpk`), so checkpoints are
//! unchanged and either implementation resumes what the other saved. State read from Burn's
//! records is imported per parameter at that parameter's first fused step (where its rank is
//! known); what was never stepped (a frozen backbone) stays in Burn's records as it was.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::momentum::MomentumState;
use burn::optim::record::AdaptorRecord;
use burn::optim::{
    Adam, AdamState, AdamW, AdamWState, AdaptiveMomentumState, GradientsParams, Optimizer, Sgd,
    SgdState,
};
use burn::record::{FullPrecisionSettings, Record};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use resnet_kernels::optim::{
    apply, update_device_param, update_flex_param, updates_on_device, ParamUpdate, UpdateRule,
};
use resnet_model::ResNet;

use super::BurnOptim;

/// Burn's optimizer records over a ResNet for optimizer `O`.
type Records<O, B> = <OptimizerAdaptor<O, ResNet<B>, B> as Optimizer<ResNet<B>, B>>::Record;

/// Where one parameter's state lives: in the flat host buffer, or on the device.
#[derive(Clone, Debug)]
struct Slot {
    /// First element of its first state buffer; the second (Adam) follows at `offset + len`.
    /// Unused when `on_device`.
    offset: usize,
    /// The state is device tensors (`FusedOptimizer::device`), not host memory.
    on_device: bool,
    /// Elements in the parameter.
    len: usize,
    /// The parameter's shape (the records store the state in it).
    shape: Vec<usize>,
    /// Updates applied so far (Adam's `time`; for SGD only whether there is a velocity).
    steps: usize,
}

/// A state buffer on the device: flat, in the optimizer's backend.
type DeviceTensor<B> = Tensor<<B as AutodiffBackend>::InnerBackend, 1>;

/// The fused optimizer (see the module docs).
#[derive(Clone)]
pub struct FusedOptimizer<B: AutodiffBackend> {
    rule: UpdateRule,
    slots: HashMap<ParamId, Slot>,
    state: Vec<f32>,
    /// The state buffers of the parameters whose state lives on the device, flat.
    device: HashMap<ParamId, Vec<DeviceTensor<B>>>,
    /// Whether new slots keep their state on the device (the backend's tensors): the plain
    /// CUDA backend. (The tests set it on the CPU to run the bookkeeping there.)
    state_on_device: bool,
    /// Burn's records not imported yet (from a checkpoint or an earlier Burn-run step).
    pending: BurnOptim<B>,
}

impl<B: AutodiffBackend> FusedOptimizer<B> {
    /// A fused optimizer with `rule`, taking over the state `burn` holds.
    pub(crate) fn new(rule: UpdateRule, burn: BurnOptim<B>) -> Self {
        Self {
            rule,
            slots: HashMap::new(),
            state: Vec::new(),
            device: HashMap::new(),
            state_on_device: updates_on_device::<B::InnerBackend>(),
            pending: burn,
        }
    }

    /// One update of every parameter `grads` has a gradient for, with learning rate `lr`.
    pub fn step(&mut self, lr: f64, model: ResNet<B>, mut grads: GradientsParams) -> ResNet<B> {
        let mut pending = self.pending_records();
        let model = model.map(&mut Stepper {
            opt: self,
            pending: &mut pending,
            grads: &mut grads,
            lr,
        });
        self.pending = pending.into_burn();
        model
    }

    /// Burn's optimizer (same settings) holding this state: the checkpoint format.
    pub(crate) fn to_burn(&self) -> BurnOptim<B> {
        let mut records = self.pending_records();
        for (id, slot) in &self.slots {
            if slot.steps == 0 {
                continue;
            }
            let state = if slot.on_device {
                self.device.get(id).cloned().unwrap_or_default()
            } else {
                let (a, b) = self.buffers(slot);
                [a, b]
                    .into_iter()
                    .filter(|v| !v.is_empty())
                    .map(|v| tensor::<_, 1>(v, &[v.len()]))
                    .collect()
            };
            records.insert(*id, slot, state);
        }
        records.into_burn()
    }

    /// The not-yet-imported records, taken out of `pending` by kind.
    fn pending_records(&self) -> Pending<B> {
        match &self.pending {
            BurnOptim::Sgd(o) => Pending::Sgd(o.to_record(), o.clone()),
            BurnOptim::Adam(o) => Pending::Adam(o.to_record(), o.clone()),
            BurnOptim::AdamW(o) => Pending::AdamW(o.to_record(), o.clone()),
        }
    }

    /// The slot's state buffers (the second is empty unless the rule keeps two).
    fn buffers(&self, slot: &Slot) -> (&[f32], &[f32]) {
        let n = slot.len;
        let a = &self.state[slot.offset..slot.offset + n * self.rule.buffers().min(1)];
        let b = &self.state[slot.offset + a.len()..slot.offset + n * self.rule.buffers()];
        (a, b)
    }

    /// The slot of parameter `id` (shape `dims`, on `device`), created on its first step with
    /// the state Burn's records hold for it, if any.
    fn slot<const D: usize>(
        &mut self,
        id: ParamId,
        dims: [usize; D],
        device: &burn::tensor::Device<B::InnerBackend>,
        pending: &mut Pending<B>,
    ) -> Slot {
        if let Some(s) = self.slots.get(&id) {
            return s.clone();
        }
        let len = dims.iter().product::<usize>();
        let on_device = self.state_on_device;
        let offset = self.state.len();
        let bufs = self.rule.buffers();
        if !on_device {
            self.state.resize(offset + len * bufs, 0.0);
        }
        let mut steps = 0;
        if let Some((a, b, s)) = pending.take::<D>(id) {
            // Only state of the right size is taken: a record of another shape belongs to
            // another parameter layout and Burn would fail on it; here it starts fresh.
            if a.len() == len * bufs.min(1) && b.len() == len * (bufs.saturating_sub(1)) {
                if on_device {
                    let upload = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [len]), device);
                    let state = [a, b].into_iter().filter(|v| !v.is_empty());
                    self.device.insert(id, state.map(upload).collect());
                } else {
                    self.state[offset..offset + a.len()].copy_from_slice(&a);
                    self.state[offset + a.len()..offset + a.len() + b.len()].copy_from_slice(&b);
                }
                steps = s;
            } else if !a.is_empty() || !b.is_empty() {
                // (An SGD record without a velocity is Burn's normal "no momentum yet".)
                tracing::warn!(
                    parameter = %id,
                    shape = ?dims,
                    saved_elements = a.len() + b.len(),
                    expected_elements = len * bufs,
                    "optimizer state in the checkpoint does not fit this parameter: its state starts afresh"
                );
            }
        }
        let slot = Slot {
            offset,
            on_device,
            len,
            shape: dims.to_vec(),
            steps,
        };
        self.slots.insert(id, slot.clone());
        slot
    }

    /// Updates one parameter: in place on the CPU backend, in one kernel on the device, or
    /// through its host copy.
    fn update<const D: usize>(
        &mut self,
        id: ParamId,
        slot: &Slot,
        lr: f64,
        param: Tensor<B::InnerBackend, D>,
        grad: Tensor<B::InnerBackend, D>,
    ) -> Tensor<B::InnerBackend, D> {
        if slot.on_device {
            let out = self.update_on_device(id, slot, lr, param, grad);
            if let Some(s) = self.slots.get_mut(&id) {
                s.steps += 1;
            }
            return out;
        }
        let rule = self.rule;
        let bufs = rule.buffers();
        let region = &mut self.state[slot.offset..slot.offset + slot.len * bufs];
        let (state_1, state_2) = region.split_at_mut(slot.len * bufs.min(1));
        let run = updater(rule, lr, slot.steps, state_1, state_2);
        // The closure is handed on untouched when the in-place path does not apply.
        let mut run = Some(run);
        let out = match update_flex_param(param, grad, |p, g| {
            if let Some(f) = run.take() {
                f(p, g)
            }
        }) {
            Ok(p) => p,
            Err((param, grad)) => host_update(param, grad, |p, g| {
                if let Some(f) = run.take() {
                    f(p, g)
                }
            }),
        };
        if let Some(s) = self.slots.get_mut(&id) {
            s.steps += 1;
        }
        out
    }
}

impl<B: AutodiffBackend> FusedOptimizer<B> {
    /// The device update of a parameter whose state is device tensors; through host copies of
    /// everything where the device kernels do not take it (not f32), so nothing is lost.
    fn update_on_device<const D: usize>(
        &mut self,
        id: ParamId,
        slot: &Slot,
        lr: f64,
        param: Tensor<B::InnerBackend, D>,
        grad: Tensor<B::InnerBackend, D>,
    ) -> Tensor<B::InnerBackend, D> {
        let rule = self.rule;
        let state = self.device.remove(&id).unwrap_or_default();
        let (param, grad, state) =
            match update_device_param(&rule, lr, slot.steps, param, grad, state) {
                Ok((p, state)) => {
                    self.device.insert(id, state);
                    return p;
                }
                Err(inputs) => inputs,
            };
        let device = param.device();
        let n = slot.len;
        let mut host: Vec<Vec<f32>> = state.into_iter().map(values).collect();
        host.resize(rule.buffers(), vec![0.0; n]);
        let (first, second) = host.split_at_mut(rule.buffers().min(1));
        let state_1 = first.first_mut().map_or(&mut [][..], |v| &mut v[..]);
        let state_2 = second.first_mut().map_or(&mut [][..], |v| &mut v[..]);
        let out = host_update(param, grad, updater(rule, lr, slot.steps, state_1, state_2));
        let upload = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [n]), &device);
        self.device
            .insert(id, host.into_iter().map(upload).collect());
        out
    }
}

/// `rule`'s update at `lr` after `steps_before` steps, with these state buffers, as a function
/// of the parameter's and the gradient's memory.
fn updater<'a>(
    rule: UpdateRule,
    lr: f64,
    steps_before: usize,
    state_1: &'a mut [f32],
    state_2: &'a mut [f32],
) -> impl FnOnce(&mut [f32], &[f32]) + 'a {
    move |param, grad| {
        let u = ParamUpdate {
            param,
            grad,
            state_1,
            state_2,
            steps_before,
        };
        apply(&rule, lr, u)
    }
}

/// The update through a host copy of the parameter and gradient (any backend, any float
/// type: the slow path where the in-place CPU one does not apply).
fn host_update<Bk: Backend, const D: usize>(
    param: Tensor<Bk, D>,
    grad: Tensor<Bk, D>,
    f: impl FnOnce(&mut [f32], &[f32]),
) -> Tensor<Bk, D> {
    let device = param.device();
    let dtype = param.dtype();
    let shape = param.shape();
    let mut p = param
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("converted to f32 above");
    let g = grad
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("converted to f32 above");
    f(&mut p, &g);
    Tensor::from_data(TensorData::new(p, shape).convert_dtype(dtype), &device)
}

/// Visits the model's parameters and updates those with a gradient.
struct Stepper<'a, B: AutodiffBackend> {
    opt: &'a mut FusedOptimizer<B>,
    pending: &'a mut Pending<B>,
    grads: &'a mut GradientsParams,
    lr: f64,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Stepper<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let inner = tensor.inner();
        let grad = if grad.device() != inner.device() {
            grad.to_device(&inner.device())
        } else {
            grad
        };
        let slot = self
            .opt
            .slot::<D>(id, inner.dims(), &inner.device(), self.pending);
        let updated = self.opt.update(id, &slot, self.lr, inner, grad);
        let mut t = Tensor::from_inner(updated);
        if require_grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Burn's records of one optimizer kind, with the (empty-stated) optimizer they go back into.
enum Pending<B: AutodiffBackend> {
    Sgd(
        Records<Sgd<B::InnerBackend>, B>,
        OptimizerAdaptor<Sgd<B::InnerBackend>, ResNet<B>, B>,
    ),
    Adam(Records<Adam, B>, OptimizerAdaptor<Adam, ResNet<B>, B>),
    AdamW(Records<AdamW, B>, OptimizerAdaptor<AdamW, ResNet<B>, B>),
}

/// A state tensor's values.
fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("converted to f32 above")
}

/// A state tensor of `shape` holding `v`.
fn tensor<Bk: Backend, const D: usize>(v: &[f32], shape: &[usize]) -> Tensor<Bk, D> {
    Tensor::from_data(
        TensorData::new(v.to_vec(), shape.to_vec()),
        &Default::default(),
    )
}

impl<B: AutodiffBackend> Pending<B> {
    /// Removes parameter `id`'s record: (first buffer, second buffer, steps taken).
    fn take<const D: usize>(&mut self, id: ParamId) -> Option<(Vec<f32>, Vec<f32>, usize)> {
        match self {
            Pending::Sgd(r, _) => {
                let state: SgdState<B::InnerBackend, D> = r.remove(&id)?.into_state();
                // Burn keeps `velocity` private; its record item carries it.
                let velocity = state.momentum.map(|m: MomentumState<B::InnerBackend, D>| {
                    let item = m.into_item::<FullPrecisionSettings>();
                    values(Tensor::<B::InnerBackend, D>::from_item(
                        item.velocity,
                        &Default::default(),
                    ))
                });
                // Burn starts the velocity afresh when a step finds none.
                let steps = usize::from(velocity.is_some());
                Some((velocity.unwrap_or_default(), Vec::new(), steps))
            }
            Pending::Adam(r, _) => {
                let state: AdamState<B::InnerBackend, D> = r.remove(&id)?.into_state();
                let m = state.momentum;
                Some((values(m.moment_1), values(m.moment_2), m.time))
            }
            Pending::AdamW(r, _) => {
                let state: AdamWState<B::InnerBackend, D> = r.remove(&id)?.into_state();
                let m = state.momentum;
                Some((values(m.moment_1), values(m.moment_2), m.time))
            }
        }
    }

    /// Adds one stepped parameter's state (its flat buffers) as Burn's record.
    fn insert(&mut self, id: ParamId, slot: &Slot, state: Vec<DeviceTensor<B>>) {
        macro_rules! by_rank {
            ($f:ident) => {
                match slot.shape.len() {
                    1 => self.$f::<1>(id, slot, state),
                    2 => self.$f::<2>(id, slot, state),
                    3 => self.$f::<3>(id, slot, state),
                    4 => self.$f::<4>(id, slot, state),
                    5 => self.$f::<5>(id, slot, state),
                    r => unreachable!("a parameter of rank {r}: ResNet parameters have rank 1-4"),
                }
            };
        }
        by_rank!(insert_rank)
    }

    fn insert_rank<const D: usize>(
        &mut self,
        id: ParamId,
        slot: &Slot,
        state: Vec<DeviceTensor<B>>,
    ) {
        let shape: [usize; D] = slot
            .shape
            .clone()
            .try_into()
            .expect("by_rank matched the rank");
        let mut state = state.into_iter().map(|t| t.reshape(shape));
        let (a, b) = (state.next(), state.next());
        match self {
            Pending::Sgd(r, _) => {
                let momentum = a.map(MomentumState::new);
                r.insert(
                    id,
                    AdaptorRecord::from_state(SgdState::<B::InnerBackend, D>::new(momentum)),
                );
            }
            Pending::Adam(r, _) => {
                let (Some(a), Some(b)) = (a, b) else {
                    unreachable!("Adam keeps two state buffers")
                };
                let m = AdaptiveMomentumState::new(slot.steps, a, b);
                r.insert(
                    id,
                    AdaptorRecord::from_state(AdamState::<B::InnerBackend, D>::new(m)),
                );
            }
            Pending::AdamW(r, _) => {
                let (Some(a), Some(b)) = (a, b) else {
                    unreachable!("AdamW keeps two state buffers")
                };
                let m = AdaptiveMomentumState::new(slot.steps, a, b);
                r.insert(
                    id,
                    AdaptorRecord::from_state(AdamWState::<B::InnerBackend, D>::new(m)),
                );
            }
        }
    }

    /// Burn's optimizer holding these records.
    fn into_burn(self) -> BurnOptim<B> {
        match self {
            Pending::Sgd(r, o) => BurnOptim::Sgd(o.load_record(r)),
            Pending::Adam(r, o) => BurnOptim::Adam(o.load_record(r)),
            Pending::AdamW(r, o) => BurnOptim::AdamW(o.load_record(r)),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The device-state bookkeeping (slots, import from Burn's records, export to them) on the
    //! CPU: with `state_on_device` forced, the flex backend is not CUDA, so each update takes
    //! the host-copy fallback of `update_on_device`, which must give the in-place path's bits.
    use super::*;
    use crate::{OptimConfig, OptimizerKind};
    use burn::backend::{Autodiff, Flex};
    use burn::module::ModuleVisitor;
    use resnet_model::{BuildResNet, ResNetConfig};

    type B = Autodiff<Flex>;

    fn model() -> ResNet<B> {
        let cfg = ResNetConfig {
            width: 4,
            num_classes: 3,
            ..ResNetConfig::default()
        };
        let m = cfg.init::<B>(&Default::default()).expect("model");
        // Materialise the lazily initialised parameters, so clones share their values.
        let _ = crate::param_hash(&m);
        m
    }

    /// The trainable parameters' bytes (running statistics are shared between clones).
    fn trainable(m: &ResNet<B>) -> Vec<u8> {
        struct Bytes(Vec<u8>);
        impl ModuleVisitor<B> for Bytes {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
                let t = p.val();
                if t.is_require_grad() {
                    self.0.extend_from_slice(t.into_data().as_bytes());
                }
            }
        }
        let mut v = Bytes(Vec::new());
        m.visit(&mut v);
        v.0
    }

    /// Gradients of a fixed linear function of the logits on a batch that depends on `i`.
    fn grads(m: &ResNet<B>, i: usize) -> GradientsParams {
        let n = 2 * 3 * 8 * 8;
        let pixels: Vec<f32> = (0..n)
            .map(|k| (((k * 7 + i * 13) % 17) as f32 - 8.0) / 8.0)
            .collect();
        let x =
            Tensor::<B, 4>::from_data(TensorData::new(pixels, [2, 3, 8, 8]), &Default::default());
        let w = Tensor::<B, 2>::from_data(
            TensorData::new(vec![1.0f32, -2.0, 0.5, 0.25, 1.5, -1.0], [2, 3]),
            &Default::default(),
        );
        let loss = (m.forward(x) * w).sum();
        GradientsParams::from_grads(loss.backward(), m)
    }

    fn fused(cfg: &OptimConfig, burn: BurnOptim<B>, on_device: bool) -> FusedOptimizer<B> {
        let mut f = FusedOptimizer::new(super::super::rule(cfg), burn);
        f.state_on_device = on_device;
        f
    }

    fn run(
        mut m: ResNet<B>,
        opt: &mut FusedOptimizer<B>,
        steps: std::ops::Range<usize>,
    ) -> ResNet<B> {
        for i in steps {
            let g = grads(&m, i);
            m = opt.step(0.05 / (1.0 + i as f64), m, g);
        }
        m
    }

    #[test]
    fn device_state_gives_the_host_states_bits_and_converts_both_ways() {
        let base = OptimConfig::default();
        let configs = [
            base.clone(),
            OptimConfig {
                nesterov: true,
                ..base.clone()
            },
            OptimConfig {
                momentum: 0.0,
                ..base.clone()
            },
            OptimConfig {
                kind: OptimizerKind::Adam,
                ..base.clone()
            },
            OptimConfig {
                kind: OptimizerKind::Adamw,
                weight_decay: 0.05,
                ..base
            },
        ];
        let start = model();
        for cfg in configs {
            let empty = || super::super::burn_optim::<B>(&cfg);
            let mut host = fused(&cfg, empty(), false);
            let straight = trainable(&run(start.clone(), &mut host, 0..4));

            let mut dev = fused(&cfg, empty(), true);
            let half = run(start.clone(), &mut dev, 0..2);
            assert!(dev.state.is_empty(), "{cfg:?}: no host state");
            assert_eq!(dev.device.len(), dev.slots.len(), "{cfg:?}");
            // Device state -> Burn's records -> host state, and host -> records -> device.
            let mut to_host = fused(&cfg, dev.to_burn(), false);
            let a = trainable(&run(half.clone(), &mut to_host, 2..4));
            let mut again = fused(&cfg, dev.to_burn(), true);
            let b = trainable(&run(half.clone(), &mut again, 2..4));
            let mut host_half = fused(&cfg, empty(), false);
            let h = run(start.clone(), &mut host_half, 0..2);
            let mut to_dev = fused(&cfg, host_half.to_burn(), true);
            assert!(
                trainable(&h) == trainable(&half),
                "{cfg:?}: two steps, device vs host"
            );
            let c = trainable(&run(h, &mut to_dev, 2..4));
            assert_ne!(straight, trainable(&start), "{cfg:?}: the parameters moved");
            for (what, got) in [
                ("device->host", a),
                ("device->device", b),
                ("host->device", c),
            ] {
                assert!(
                    got == straight,
                    "{cfg:?}: {what} differs from the host state's run"
                );
            }
        }
    }
}
