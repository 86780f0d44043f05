//! The fused CPU optimizer: the state of every parameter in one flat buffer, each parameter
//! updated in one in-place pass ([`resnet_kernels::optim`]) instead of Burn's chain of tensor
//! ops, in the same arithmetic (same bits: `tests` below and the golden hashes).
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
use resnet_kernels::optim::{apply, update_flex_param, ParamUpdate, UpdateRule};
use resnet_model::ResNet;

use super::BurnOptim;

/// Burn's optimizer records over a ResNet for optimizer `O`.
type Records<O, B> = <OptimizerAdaptor<O, ResNet<B>, B> as Optimizer<ResNet<B>, B>>::Record;

/// Where one parameter's state lives in the flat buffer.
#[derive(Clone, Debug)]
struct Slot {
    /// First element of its first state buffer; the second (Adam) follows at `offset + len`.
    offset: usize,
    /// Elements in the parameter.
    len: usize,
    /// The parameter's shape (the records store the state in it).
    shape: Vec<usize>,
    /// Updates applied so far (Adam's `time`; for SGD only whether there is a velocity).
    steps: usize,
}

/// The fused CPU optimizer (see the module docs).
#[derive(Clone)]
pub struct FusedOptimizer<B: AutodiffBackend> {
    rule: UpdateRule,
    slots: HashMap<ParamId, Slot>,
    state: Vec<f32>,
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
            let (a, b) = self.buffers(slot);
            records.insert(*id, slot, a, b);
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

    /// The slot of parameter `id` (shape `dims`), created on its first step with the state
    /// Burn's records hold for it, if any.
    fn slot<const D: usize>(
        &mut self,
        id: ParamId,
        dims: [usize; D],
        pending: &mut Pending<B>,
    ) -> Slot {
        if let Some(s) = self.slots.get(&id) {
            return s.clone();
        }
        let len = dims.iter().product::<usize>();
        let offset = self.state.len();
        let bufs = self.rule.buffers();
        self.state.resize(offset + len * bufs, 0.0);
        let mut steps = 0;
        if let Some((a, b, s)) = pending.take::<D>(id) {
            // Only state of the right size is taken: a record of another shape belongs to
            // another parameter layout and Burn would fail on it; here it starts fresh.
            if a.len() == len * bufs.min(1) && b.len() == len * (bufs.saturating_sub(1)) {
                self.state[offset..offset + a.len()].copy_from_slice(&a);
                self.state[offset + a.len()..offset + a.len() + b.len()].copy_from_slice(&b);
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
            len,
            shape: dims.to_vec(),
            steps,
        };
        self.slots.insert(id, slot.clone());
        slot
    }

    /// Updates one parameter in place (on the CPU backend), or through its host copy.
    fn update<const D: usize>(
        &mut self,
        id: ParamId,
        slot: &Slot,
        lr: f64,
        param: Tensor<B::InnerBackend, D>,
        grad: Tensor<B::InnerBackend, D>,
    ) -> Tensor<B::InnerBackend, D> {
        let rule = self.rule;
        let bufs = rule.buffers();
        let region = &mut self.state[slot.offset..slot.offset + slot.len * bufs];
        let (state_1, state_2) = region.split_at_mut(slot.len * bufs.min(1));
        let run = move |param: &mut [f32], grad: &[f32]| {
            let u = ParamUpdate {
                param,
                grad,
                state_1,
                state_2,
                steps_before: slot.steps,
            };
            apply(&rule, lr, u)
        };
        // The closure is handed on untouched when the in-place path does not apply.
        let mut run = Some(run);
        let out = match update_flex_param(param, grad, |p, g| {
            if let Some(mut f) = run.take() {
                f(p, g)
            }
        }) {
            Ok(p) => p,
            Err((param, grad)) => host_update(param, grad, |p, g| {
                if let Some(mut f) = run.take() {
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
        let slot = self.opt.slot::<D>(id, inner.dims(), self.pending);
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

    /// Adds one stepped parameter's state as Burn's record.
    fn insert(&mut self, id: ParamId, slot: &Slot, a: &[f32], b: &[f32]) {
        macro_rules! by_rank {
            ($f:ident) => {
                match slot.shape.len() {
                    1 => self.$f::<1>(id, slot, a, b),
                    2 => self.$f::<2>(id, slot, a, b),
                    3 => self.$f::<3>(id, slot, a, b),
                    4 => self.$f::<4>(id, slot, a, b),
                    5 => self.$f::<5>(id, slot, a, b),
                    r => unreachable!("a parameter of rank {r}: ResNet parameters have rank 1-4"),
                }
            };
        }
        by_rank!(insert_rank)
    }

    fn insert_rank<const D: usize>(&mut self, id: ParamId, slot: &Slot, a: &[f32], b: &[f32]) {
        let shape = &slot.shape;
        match self {
            Pending::Sgd(r, _) => {
                let momentum =
                    (!a.is_empty()).then(|| MomentumState::new(tensor::<_, D>(a, shape)));
                r.insert(
                    id,
                    AdaptorRecord::from_state(SgdState::<B::InnerBackend, D>::new(momentum)),
                );
            }
            Pending::Adam(r, _) => {
                let m = AdaptiveMomentumState::new(slot.steps, tensor(a, shape), tensor(b, shape));
                r.insert(
                    id,
                    AdaptorRecord::from_state(AdamState::<B::InnerBackend, D>::new(m)),
                );
            }
            Pending::AdamW(r, _) => {
                let m = AdaptiveMomentumState::new(slot.steps, tensor(a, shape), tensor(b, shape));
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
