//! The backward pass with the gradient all-reduce overlapped (`overlap`, #21): the kernels
//! announce each parameter gradient as the backward computes it (`resnet_kernels::tap`), the
//! gradients fill buckets ([`crate::buckets`]), and a collective thread reduces each bucket as
//! soon as it (and every bucket before it in the plan) is complete, while the backward goes on.
//! Gradients no kernel announced (e.g. Burn's own ops on a backend without this project's
//! kernels) are taken from the finished backward's gradients, and the step's flags (rank 0's
//! checkpoint clock, stop requests, a non-finite loss) ride in a last bucket. Each element is
//! reduced exactly as in the one flat all-reduce (`ring::all_reduce_sum_bucket`), so the result,
//! and the run's hash, is bit-identical to `overlap = false`.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use burn::backend::autodiff::NodeId;
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, Tensor, TensorData, TensorMetadata, TensorPrimitive};
use resnet_kernels::tap::{node_id, with_tap, Tap};
use resnet_model::ResNet;

use super::Trainer;
use crate::buckets::{bucket_elems, plan, Bucket, FillError, Filler};
use crate::parallel::{Entry, GradSync, Register, SyncError};
use crate::GradWire;
use crate::TrainError;

/// The gradients the step all-reduces: parameters that require one, in module order (the flat
/// buffer's order in the non-overlapped path too).
pub(super) struct Layout {
    pub(super) ids: Vec<ParamId>,
    pub(super) dims: Vec<Vec<usize>>,
    pub(super) lens: Vec<usize>,
    /// Graph node of each parameter's value, for the kernels' announcements.
    pub(super) nodes: HashMap<NodeId, usize>,
    /// The classifier's parameters, which go in the last bucket ([`plan`]).
    late_ids: Vec<ParamId>,
    /// The first parameter of the run of late ones that ends the layout (`lens.len()`: none).
    pub(super) late: usize,
    /// The buckets stay on the device (`overlap_device.rs`) instead of going through the host.
    pub(super) device: bool,
}

impl Layout {
    pub(super) fn grads_len(&self) -> usize {
        self.lens.iter().sum()
    }
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Layout {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        if !t.is_require_grad() {
            return;
        }
        if let Some(node) = node_id(&t) {
            self.nodes.insert(node, self.ids.len());
        }
        if !self.late_ids.contains(&param.id) {
            self.late = self.ids.len() + 1;
        }
        self.ids.push(param.id);
        self.dims.push(t.dims().to_vec());
        self.lens.push(t.shape().num_elements());
    }
}

/// What the overlapped backward and all-reduce produced.
pub(super) struct Overlapped {
    /// The group's mean gradients.
    pub grads: GradientsParams,
    /// The step's flags, averaged over the group (as the flat path leaves them).
    pub flags: [f32; 2],
    /// Whether every element of the reduced gradient is finite.
    pub grads_finite: bool,
    /// When the backward pass (without the reduction) ended.
    pub backward_end: Instant,
    /// The collective's own time on the buckets (hidden or not).
    pub communication: Duration,
    /// Gradient elements all-reduced.
    pub elements: usize,
}

/// `grad` (a `FloatTensor<B>` behind `Any`) as host f32 values; `None` when it is not one.
fn host<B: Backend>(grad: &dyn Any) -> Option<Vec<f32>> {
    let g = grad.downcast_ref::<FloatTensor<B>>()?.clone();
    let n = g.shape().num_elements();
    let flat = B::float_reshape(g, Shape::new([n]));
    Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(flat))
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .ok()
}

/// Places the gradients no kernel announced (module order), from the finished backward's.
struct FillRest<'a, S: FnMut(Bucket)> {
    grads: &'a GradientsParams,
    filler: &'a mut Filler<S>,
    layout: &'a Layout,
    next: usize,
    absent: Vec<usize>,
    error: Option<FillError>,
}

impl<B: AutodiffBackend, S: FnMut(Bucket)> ModuleVisitor<B> for FillRest<'_, S> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let p = self.next;
        if self.layout.ids.get(p) != Some(&param.id) {
            return; // a parameter without gradient (not in the layout)
        }
        self.next += 1;
        if self.filler.has(p) {
            return;
        }
        let values = self
            .grads
            .get::<B::InnerBackend, D>(param.id)
            .and_then(|g| g.into_data().convert::<f32>().into_vec::<f32>().ok());
        if values.is_none() {
            self.absent.push(p);
        }
        if let Err(e) = self.filler.put(p, values) {
            self.error.get_or_insert(e);
        }
    }
}

/// The collective thread: reduces the buckets in the order they come, until the sender hangs
/// up. After a failure it reduces nothing more (the step has failed; the peers see it too)
/// but keeps draining, so the backward never blocks on it.
fn reduce_all(
    sync: &mut dyn GradSync,
    rx: mpsc::Receiver<Bucket>,
    total: usize,
    wire: GradWire,
) -> (Vec<Bucket>, Duration, Result<(), SyncError>) {
    let mut done = Vec::new();
    let mut busy = Duration::ZERO;
    let mut result = Ok(());
    for mut b in rx {
        if result.is_ok() {
            let t = Instant::now();
            result = sync.all_reduce_bucket_mean(&mut b.data, b.offset, total, wire);
            busy += t.elapsed();
        }
        done.push(b);
    }
    (done, busy, result)
}

impl<B: AutodiffBackend> Trainer<B> {
    /// The layout to overlap this step's all-reduce with, when it does: a data-parallel group
    /// whose sync reduces buckets (on the host, or of this backend's tensors on the device:
    /// f32 wire only), with `overlap` on.
    pub(super) fn overlap_layout(&mut self, model: &ResNet<B>) -> Option<Layout> {
        let f32_wire = self.state.config.grad_wire == GradWire::F32;
        let overlap = self.state.config.overlap;
        let sync = self.replicas.peers()?;
        let probe = Tensor::<B::InnerBackend, 1>::empty([0], &self.device);
        let device = overlap && f32_wire && sync.reduces_device_buckets(&probe);
        if !(overlap && (device || sync.reduces_buckets())) {
            return None;
        }
        // The classifier is the model's last module: its gradients end the buffer. On the CPU
        // it is Burn's own Linear, whose gradients nothing announces, so it goes last (else the
        // first bucket would wait for the end of the backward, and every bucket behind it).
        let fc = &model.fc;
        let late_ids = std::iter::once(fc.weight.id)
            .chain(fc.bias.as_ref().map(|b| b.id))
            .collect();
        let mut layout = Layout {
            ids: Vec::new(),
            dims: Vec::new(),
            lens: Vec::new(),
            nodes: HashMap::new(),
            late_ids,
            late: 0,
            device,
        };
        model.visit(&mut layout);
        Some(layout)
    }

    /// `loss.backward()` with the gradients' all-reduce running alongside. The group's sync is
    /// lent to the collective thread meanwhile (`self` still knows its rank and world, but has
    /// no peers to exchange with). `flags` is called
    /// once the backward is done and gives the step's flags (it may read the loss then; its
    /// time counts to the backward, as in the non-overlapped step).
    pub(super) fn backward_overlapped(
        &mut self,
        model: &ResNet<B>,
        loss: Tensor<B, 1>,
        layout: Layout,
        flags: impl FnOnce(&mut Self) -> [f32; 2],
    ) -> Result<Overlapped, TrainError> {
        let mut sync = self
            .replicas
            .lend()
            .expect("overlap_layout found a data-parallel sync");
        if layout.device {
            let (sync, out) = self.overlap_on_device(sync, model, loss, &layout, flags);
            self.replicas.give_back(sync);
            return out;
        }
        let out = self.overlap_with(sync.as_mut(), model, loss, &layout, flags);
        self.replicas.give_back(sync);
        out
    }

    fn overlap_with(
        &mut self,
        sync: &mut dyn GradSync,
        model: &ResNet<B>,
        loss: Tensor<B, 1>,
        layout: &Layout,
        flags: impl FnOnce(&mut Self) -> [f32; 2],
    ) -> Result<Overlapped, TrainError> {
        let wire = self.state.config.grad_wire;
        let grads_len = layout.grads_len();
        let total = grads_len + 2;
        let cap = bucket_elems(self.state.config.bucket_mb);
        let buckets = plan(&layout.lens, cap, layout.late);
        let (tx, rx) = mpsc::channel::<Bucket>();
        std::thread::scope(|s| {
            let comm = s.spawn(move || reduce_all(sync, rx, total, wire));
            let to_comm = tx.clone();
            // A send fails only once the collective thread has stopped, which it reports.
            let filler = Rc::new(RefCell::new(Filler::new(
                &layout.lens,
                &buckets,
                move |b| {
                    let _ = to_comm.send(b);
                },
            )));
            let tap_error: Rc<RefCell<Option<FillError>>> = Rc::default();
            let tap: Tap = {
                let (filler, tap_error) = (filler.clone(), tap_error.clone());
                let nodes = layout.nodes.clone();
                Box::new(move |node, grad| {
                    let Some(&p) = nodes.get(&node) else { return };
                    if let Some(values) = host::<B::InnerBackend>(grad) {
                        if let Err(e) = filler.borrow_mut().put(p, Some(values)) {
                            tap_error.borrow_mut().get_or_insert(e);
                        }
                    }
                })
            };
            let (grads, tap) = with_tap(tap, || loss.backward());
            drop(tap);
            // (Reads the loss: on the CPU it is ready; the flags go out last, below.)
            let step_flags = flags(self);
            let backward_end = Instant::now();
            let grads = GradientsParams::from_grads(grads, model);
            let (absent, rest_error) = {
                let mut filler = filler.borrow_mut();
                let mut rest = FillRest {
                    grads: &grads,
                    filler: &mut filler,
                    layout,
                    next: 0,
                    absent: Vec::new(),
                    error: None,
                };
                model.visit(&mut rest);
                (rest.absent, rest.error)
            };
            drop(filler); // every gradient bucket has gone out; its sender with it
            let _ = tx.send(Bucket {
                offset: grads_len,
                data: step_flags.to_vec(),
            });
            drop(tx);
            let (done, communication, result) = comm.join().expect("the collective thread");
            result.map_err(TrainError::Collective)?;
            if let Some(e) = tap_error.borrow_mut().take().or(rest_error) {
                return Err(TrainError::Collective(SyncError::Local(format!(
                    "overlapped all-reduce: {e}"
                ))));
            }
            let mut flat = vec![0f32; total];
            for b in &done {
                flat[b.offset..b.offset + b.data.len()].copy_from_slice(&b.data);
            }
            let flags = [flat[grads_len], flat[grads_len + 1]];
            flat.truncate(grads_len);
            let grads_finite = flat.iter().all(|v| v.is_finite());
            Ok(Overlapped {
                grads: self.register(model, grads, layout, flat, &absent),
                flags,
                grads_finite,
                backward_end,
                communication,
                elements: grads_len,
            })
        })
    }

    /// The reduced flat buffer as the step's gradients (parameters that had none stay without).
    fn register(
        &self,
        model: &ResNet<B>,
        grads: GradientsParams,
        layout: &Layout,
        flat: Vec<f32>,
        absent: &[usize],
    ) -> GradientsParams {
        let n = flat.len();
        let flat =
            Tensor::<B::InnerBackend, 1>::from_data(TensorData::new(flat, [n]), &self.device);
        register_flat(model, grads, layout, &flat, absent)
    }
}

/// The reduced flat gradient tensor's slices as the step's gradients (parameters listed in
/// `absent` had none and stay without).
pub(super) fn register_flat<B: AutodiffBackend>(
    model: &ResNet<B>,
    mut grads: GradientsParams,
    layout: &Layout,
    flat: &Tensor<B::InnerBackend, 1>,
    absent: &[usize],
) -> GradientsParams {
    let mut offset = 0;
    let mut entries: Vec<Entry> = Vec::with_capacity(layout.ids.len());
    for (p, (id, dims)) in layout.ids.iter().zip(&layout.dims).enumerate() {
        if !absent.contains(&p) {
            entries.push((*id, dims.clone(), offset));
        }
        offset += layout.lens[p];
    }
    let mut r = Register::<B> {
        grads: &mut grads,
        flat,
        entries: &entries,
        next: 0,
    };
    model.visit(&mut r);
    grads
}
