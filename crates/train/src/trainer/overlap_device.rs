//! The overlapped all-reduce with its buckets on the device (#21; NCCL with `--nccl-buffers
//! device`): the same buckets, in the same order, as `overlap.rs`, but a bucket is the
//! concatenation of its gradients' device tensors, and the group's sync queues its sum on the
//! device (NCCL on its own stream, ordered after the compute stream by an event) and returns at
//! once, so the backward goes on while the bucket crosses the network. No host copy of a
//! gradient and no collective thread: one wait after the backward, under the collective's
//! timeout, then each bucket is divided by the world size (as the flat device path does) and
//! sliced back into the gradients.
//!
//! On a world of 2 every element's sum is `a + b` whatever the bucketing, so the run is
//! bit-identical to the flat device all-reduce; with more ranks NCCL's own chunking may add in
//! another order (the TCP ring's buckets keep the order; its path is `overlap.rs`). The CPU
//! tests run this path with a sync that reduces each bucket through the in-memory ring.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, Tensor, TensorData, TensorPrimitive};
use resnet_kernels::tap::{with_tap, Tap};
use resnet_model::ResNet;

use super::overlap::{register_flat, Layout, Overlapped};
use super::Trainer;
use crate::buckets::{bucket_elems, plan, Part, Released, Slots};
use crate::parallel::{GradSync, SyncError};
use crate::TrainError;

/// A flat tensor of the trainer's inner backend.
type Flat<B> = Tensor<<B as AutodiffBackend>::InnerBackend, 1>;

impl<T: Backend> Part for Tensor<T, 1> {
    fn elems(&self) -> usize {
        self.dims()[0]
    }
}

/// `grad` (a `FloatTensor<B>` behind `Any`) as a flat tensor, on the device it is on.
fn flat<B: Backend>(grad: &dyn std::any::Any) -> Option<Tensor<B, 1>> {
    let g = grad.downcast_ref::<FloatTensor<B>>()?.clone();
    let n = burn::tensor::TensorMetadata::shape(&g).num_elements();
    Some(Tensor::from_primitive(TensorPrimitive::Float(
        B::float_reshape(g, Shape::new([n])),
    )))
}

/// What the kernels' tap and the end of the step share.
struct Buckets<B: AutodiffBackend> {
    sync: Box<dyn GradSync>,
    slots: Slots<Flat<B>>,
    total: usize,
    device: burn::tensor::Device<B::InnerBackend>,
    /// Started buckets: offset in the flat buffer, and the tensor that will hold the sum.
    started: Vec<(usize, Flat<B>)>,
    /// The collective's time in the calls (queueing, then the final wait).
    busy: Duration,
    /// The first failure; nothing is started after it (the peers fail too).
    error: Option<TrainError>,
}

impl<B: AutodiffBackend> Buckets<B> {
    fn put(&mut self, p: usize, part: Option<Flat<B>>) {
        if self.error.is_some() {
            return;
        }
        match self.slots.put(p, part) {
            Ok(due) => self.start(due),
            Err(e) => {
                self.error = Some(TrainError::Collective(SyncError::Local(format!(
                    "overlapped all-reduce: {e}"
                ))))
            }
        }
    }

    /// Starts each due bucket: its gradients (zeros for one without) as one tensor.
    fn start(&mut self, due: Vec<Released<Flat<B>>>) {
        for r in due {
            let parts: Vec<Flat<B>> = r
                .parts
                .into_iter()
                .zip(&r.lens)
                .map(|(g, &n)| g.unwrap_or_else(|| Tensor::zeros([n], &self.device)))
                .collect();
            if parts.is_empty() {
                continue;
            }
            self.start_one(r.offset, Tensor::cat(parts, 0));
        }
    }

    fn start_one(&mut self, offset: usize, mut bucket: Flat<B>) {
        if self.error.is_some() {
            return;
        }
        let t = Instant::now();
        let r = self
            .sync
            .start_device_bucket_sum(&mut bucket, offset, self.total);
        self.busy += t.elapsed();
        match r {
            Ok(()) => self.started.push((offset, bucket)),
            Err(e) => self.error = Some(TrainError::Collective(e)),
        }
    }
}

/// Places the gradients no kernel announced (module order), from the finished backward's.
struct Rest<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    buckets: &'a mut Buckets<B>,
    layout: &'a Layout,
    next: usize,
    absent: Vec<usize>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Rest<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let p = self.next;
        if self.layout.ids.get(p) != Some(&param.id) {
            return; // a parameter without gradient (not in the layout)
        }
        self.next += 1;
        if self.buckets.slots.has(p) {
            return;
        }
        let g = self.grads.get::<B::InnerBackend, D>(param.id).map(|g| {
            let n = g.shape().num_elements();
            g.reshape([n])
        });
        if g.is_none() {
            self.absent.push(p);
        }
        self.buckets.put(p, g);
    }
}

impl<B: AutodiffBackend> Trainer<B> {
    /// `loss.backward()` with each bucket's all-reduce queued on the device as soon as it is
    /// complete (see the module docs). Hands `sync` back with the result.
    pub(super) fn overlap_on_device(
        &mut self,
        sync: Box<dyn GradSync>,
        model: &ResNet<B>,
        loss: Tensor<B, 1>,
        layout: &Layout,
        flags: impl FnOnce(&mut Self) -> [f32; 2],
    ) -> (Box<dyn GradSync>, Result<Overlapped, TrainError>) {
        let grads_len = layout.grads_len();
        let cap = bucket_elems(self.state.config.bucket_mb);
        let plan = plan(&layout.lens, cap, layout.late);
        let state = Rc::new(RefCell::new(Buckets::<B> {
            sync,
            slots: Slots::new(&layout.lens, &plan),
            total: grads_len + 2,
            device: self.device.clone(),
            started: Vec::new(),
            busy: Duration::ZERO,
            error: None,
        }));
        {
            let mut s = state.borrow_mut();
            let due = s.slots.due();
            s.start(due);
        }
        let tap: Tap = {
            let state = state.clone();
            let nodes = layout.nodes.clone();
            Box::new(move |node, grad| {
                let Some(&p) = nodes.get(&node) else { return };
                if let Some(g) = flat::<B::InnerBackend>(grad) {
                    state.borrow_mut().put(p, Some(g));
                }
            })
        };
        let (grads, tap) = with_tap(tap, || loss.backward());
        drop(tap);
        let step_flags = flags(self);
        let backward_end = Instant::now();
        let grads = GradientsParams::from_grads(grads, model);
        let absent = {
            let mut s = state.borrow_mut();
            let mut rest = Rest {
                grads: &grads,
                buckets: &mut s,
                layout,
                next: 0,
                absent: Vec::new(),
            };
            model.visit(&mut rest);
            rest.absent
        };
        let Ok(state) = Rc::try_unwrap(state) else {
            unreachable!("the tap holding the other reference was dropped above")
        };
        let mut s = state.into_inner();
        let flags_t = Tensor::from_data(TensorData::new(step_flags.to_vec(), [2]), &self.device);
        s.start_one(grads_len, flags_t);
        // One wait for every bucket, also after a failure (the queued ones must not outlive
        // the step); the first error wins.
        let t = Instant::now();
        let finished = s.sync.finish_device_buckets();
        s.busy += t.elapsed();
        let world = s.sync.world();
        let out = match (s.error.take(), finished) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(TrainError::Collective(e)),
            (None, Ok(())) => {
                self.assemble_device_buckets(model, grads, layout, s.started, &absent, world)
            }
        };
        let sync = s.sync;
        let out = out.map(|(grads, flags, grads_finite)| Overlapped {
            grads,
            flags,
            grads_finite,
            backward_end,
            communication: s.busy,
            elements: grads_len,
        });
        (sync, out)
    }

    /// The reduced buckets (sums) as the step's mean gradients, its flags, and whether every
    /// gradient element is finite (read back with the flags: one small transfer).
    fn assemble_device_buckets(
        &self,
        model: &ResNet<B>,
        grads: GradientsParams,
        layout: &Layout,
        mut started: Vec<(usize, Flat<B>)>,
        absent: &[usize],
        world: usize,
    ) -> Result<(GradientsParams, [f32; 2], bool), TrainError> {
        let grads_len = layout.grads_len();
        started.sort_by_key(|(offset, _)| *offset);
        let mean = |t: Flat<B>| {
            if world > 1 {
                t.div_scalar(world as f32)
            } else {
                t
            }
        };
        let (flags, parts): (Vec<_>, Vec<_>) = started
            .into_iter()
            .partition(|(offset, _)| *offset == grads_len);
        let flags = flags
            .into_iter()
            .next()
            .map(|(_, t)| mean(t))
            .ok_or_else(|| {
                TrainError::Collective(SyncError::Local(
                    "overlapped all-reduce: the flags' bucket is missing".into(),
                ))
            })?;
        let parts: Vec<Flat<B>> = parts.into_iter().map(|(_, t)| t).collect();
        let flat = if parts.is_empty() {
            Tensor::zeros([0], &self.device)
        } else {
            mean(Tensor::cat(parts, 0))
        };
        if flat.dims()[0] != grads_len {
            return Err(TrainError::Collective(SyncError::Local(format!(
                "overlapped all-reduce: {} gradient elements came back, expected {grads_len}",
                flat.dims()[0]
            ))));
        }
        // x * 0 is 0 for every finite x and NaN otherwise (as `sync_gradients_with`).
        let zero = (flat.clone() * 0.0).sum();
        let tail: Vec<f32> = Tensor::cat(vec![flags, zero], 0)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| {
                TrainError::Collective(SyncError::Local(format!(
                    "reading the step flags back: {e:?}"
                )))
            })?;
        let grads = register_flat(model, grads, layout, &flat, absent);
        Ok((grads, [tail[0], tail[1]], tail[2] == 0.0))
    }
}
