//! Gradient taps: the kernels' autodiff nodes announce each parameter gradient the moment their
//! backward step has computed it, so a data-parallel trainer can start reducing a bucket of
//! gradients while the rest of the backward pass still runs (#21's overlap).
//!
//! Why here and why a scoped, per-thread hook: Burn runs a backward pass as one call
//! (`loss.backward()`) on the calling thread, executing the graph's steps deepest first, and
//! offers no callback when a gradient is final. The nodes that see parameter gradients are this
//! crate's — the convolution (the weight: 99.9% of a ResNet's parameters), the fused
//! BatchNorm (scale and shift) and the classifier's linear op — and they report them through
//! [`announce`]. The trainer installs a tap for the duration of one backward call with
//! [`with_tap`]; outside that call (evaluation, other threads, runs without overlap) announcing
//! costs one thread-local read and does nothing. No configuration travels this way: the tap is
//! a listener, and what the kernels compute is the same with or without one.
//!
//! Parameters that reach the loss through Burn's own ops (the generic BatchNorm composition,
//! `--cuda-bn burn` or `RESNET_BN=burn`) pass through [`tapped`], an identity node whose
//! backward announces the parameter's whole gradient once every use of it is summed.
//!
//! A tap sees a gradient as the node registers it. Every parameter of a ResNet feeds exactly one
//! node, so that is its final gradient; a parameter used twice would be announced once per use
//! (the tap's owner must then not treat the first announcement as final).

use std::any::{Any, TypeId};
use std::cell::RefCell;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::autodiff::NodeId;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::cast::{cast, float_primitive};

/// What a tap is handed: the graph node of the parameter (see [`node_id`]) and its gradient,
/// a `FloatTensor<B>` of the inner backend behind `Any` (the tap knows its backend; this crate's
/// nodes are generic over it).
pub type Tap = Box<dyn FnMut(NodeId, &dyn Any)>;

thread_local! {
    static TAP: RefCell<Option<Tap>> = const { RefCell::new(None) };
}

/// Runs `f` (a backward pass) with `tap` listening on this thread, and hands the tap back.
/// Nested calls restore the outer tap; a panic in `f` removes the tap before it unwinds.
pub fn with_tap<R>(tap: Tap, f: impl FnOnce() -> R) -> (R, Tap) {
    struct Restore(Option<Tap>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            TAP.with(|t| *t.borrow_mut() = outer);
        }
    }
    let outer = TAP.with(|t| t.borrow_mut().replace(tap));
    let restore = Restore(outer);
    let r = f();
    let tap = TAP
        .with(|t| t.borrow_mut().take())
        .expect("the tap installed above (a nested with_tap restores it)");
    drop(restore); // the outer tap back (on a panic, the unwinding drops it)
    (r, tap)
}

/// Called by a node's backward step with a parameter's gradient (`node`: the parameter's graph
/// node). Does nothing unless a tap listens on this thread.
pub fn announce<B: Backend>(node: NodeId, grad: &FloatTensor<B>) {
    TAP.with(|t| {
        if let Some(tap) = t.borrow_mut().as_mut() {
            tap(node, grad as &dyn Any);
        }
    });
}

/// The autodiff graph node of `t` (a parameter's value), which a tap's announcements name;
/// `None` when `t` is not a tensor of Burn's autodiff backend.
pub fn node_id<B: AutodiffBackend, const D: usize>(t: &Tensor<B, D>) -> Option<NodeId> {
    let prim: FloatTensor<B> = t.clone().into_primitive().tensor();
    (&prim as &dyn Any)
        .downcast_ref::<FloatTensor<Autodiff<B::InnerBackend>>>()
        .map(|a| a.node.id)
}

/// The identity node of [`tapped`]: its backward hands the gradient on to the parameter and
/// announces it.
#[derive(Debug)]
struct TapBackward;

impl<I: Backend> Backward<I, 1> for TapBackward {
    type State = ();

    fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<I>(&ops.node);
        if let Some(node) = parent {
            announce::<I>(node.id, &grad);
            grads.register::<I>(node.id, grad);
        }
    }
}

fn tapped_on<I: Backend>(t: FloatTensor<Autodiff<I>>) -> FloatTensor<Autodiff<I>> {
    TapBackward
        .prepare::<NoCheckpointing>([t.node.clone()])
        .compute_bound()
        .stateless(t.primitive)
}

/// `t` unchanged, through an identity node whose backward announces `t`'s gradient (summed
/// over every use of `t`) to the tap, on the training backends the project runs
/// (`Autodiff<Flex>`, and on CUDA builds the plain and the fusion backends); any other
/// backend, or a `t` without a gradient, gets `t` back as it is. Costs no kernel: the node's
/// output is `t`'s own tensor.
pub fn tapped<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    fn on<B: Backend, I: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
        let a: FloatTensor<Autodiff<I>> = cast(float_primitive(t)).expect("checked by TypeId");
        Tensor::from_primitive(TensorPrimitive::Float(
            cast(tapped_on::<I>(a)).expect("same type"),
        ))
    }
    let b = TypeId::of::<B>();
    if b == TypeId::of::<Autodiff<Flex>>() {
        return on::<B, Flex, D>(t);
    }
    #[cfg(feature = "cuda")]
    {
        if b == TypeId::of::<Autodiff<crate::backends::CudaPlain>>() {
            return on::<B, crate::backends::CudaPlain, D>(t);
        }
        if b == TypeId::of::<Autodiff<burn::backend::Cuda>>() {
            return on::<B, burn::backend::Cuda, D>(t);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{TensorData, TensorMetadata};
    use std::sync::{Arc, Mutex};

    type Ad = Autodiff<Flex>;

    #[test]
    fn a_tap_hears_announcements_only_while_installed_and_nested_taps_restore() {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let t = Tensor::<Flex, 1>::from_data(
            TensorData::new(vec![1.0f32, 2.0], [2]),
            &Default::default(),
        )
        .into_primitive()
        .tensor();
        let id = NodeId { value: 7 };
        announce::<Flex>(id, &t); // nobody listens: nothing happens
        let h = heard.clone();
        let outer: Tap = Box::new(move |n, g| {
            let len = g
                .downcast_ref::<FloatTensor<Flex>>()
                .map(|g| g.shape().num_elements());
            h.lock().expect("calls").push(("outer", n.value, len));
        });
        let h = heard.clone();
        let ((), _outer) = with_tap(outer, || {
            announce::<Flex>(id, &t);
            let inner: Tap =
                Box::new(move |n, _| h.lock().expect("calls").push(("inner", n.value, None)));
            let ((), _inner) = with_tap(inner, || announce::<Flex>(NodeId { value: 8 }, &t));
            announce::<Flex>(NodeId { value: 9 }, &t);
        });
        announce::<Flex>(id, &t);
        assert_eq!(
            *heard.lock().expect("calls"),
            vec![
                ("outer", 7, Some(2)),
                ("inner", 8, None),
                ("outer", 9, Some(2))
            ]
        );
    }

    #[test]
    fn node_id_names_the_node_a_gradient_is_registered_on() {
        let device = Default::default();
        let w = Tensor::<Ad, 1>::from_data(TensorData::new(vec![1.0f32, -2.0], [2]), &device)
            .require_grad();
        let a = node_id(&w).expect("an autodiff tensor");
        assert_eq!(node_id(&w.clone()), Some(a), "clones share the node");
        let other = Tensor::<Ad, 1>::from_data(TensorData::new(vec![0.0f32; 2], [2]), &device)
            .require_grad();
        assert_ne!(node_id(&other), Some(a));
    }
}
