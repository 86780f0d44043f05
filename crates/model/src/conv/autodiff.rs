//! The convolution as one operation of Burn's autodiff graph, with the forward pass and both
//! gradients computed by a [`ConvKernels`] implementation instead of the backend's defaults:
//! this crate's im2col + GEMM kernels on the flex CPU backend ([`FlexKernels`]), fixed-strategy
//! cubecl kernels on CUDA (`super::cuda`).

use std::fmt::Debug;
use std::marker::PhantomData;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;

use super::kernels::{self, ConvGeom};
use super::{f32_contiguous, flex_forward, flex_from_vec};

/// A bias-free convolution's three computations on backend `B`.
pub(crate) trait ConvKernels<B: Backend>: Debug + Send + Sync + 'static {
    /// The output of `x` convolved with `w`.
    fn forward(x: &FloatTensor<B>, w: &FloatTensor<B>, g: &ConvGeom) -> FloatTensor<B>;
    /// The input's gradient from the output's (`dy`, as [`ConvKernels::prepare`] left it).
    fn grad_input(dy: &FloatTensor<B>, w: &FloatTensor<B>, g: &ConvGeom) -> FloatTensor<B>;
    /// The weight's gradient from the output's.
    fn grad_weight(x: &FloatTensor<B>, dy: &FloatTensor<B>, g: &ConvGeom) -> FloatTensor<B>;
    /// The output gradient in the form both gradient functions read (default: as it comes).
    fn prepare(dy: FloatTensor<B>) -> FloatTensor<B> {
        dy
    }
}

/// This crate's CPU kernels ([`super::kernels`]) on the flex backend.
#[derive(Debug)]
pub(crate) struct FlexKernels;

impl ConvKernels<Flex> for FlexKernels {
    fn forward(x: &FlexTensor, w: &FlexTensor, g: &ConvGeom) -> FlexTensor {
        flex_forward(x, w, g)
    }

    fn grad_input(dy: &FlexTensor, w: &FlexTensor, g: &ConvGeom) -> FlexTensor {
        let w = f32_contiguous(w);
        let dx = kernels::grad_input(g, dy.storage::<f32>(), w.storage::<f32>());
        flex_from_vec(dx, [g.batch, g.cin, g.in_hw[0], g.in_hw[1]])
    }

    fn grad_weight(x: &FlexTensor, dy: &FlexTensor, g: &ConvGeom) -> FlexTensor {
        let x = f32_contiguous(x);
        let dw = kernels::grad_weight(g, x.storage::<f32>(), dy.storage::<f32>());
        flex_from_vec(dw, [g.cout, g.cin, g.kernel[0], g.kernel[1]])
    }

    fn prepare(dy: FlexTensor) -> FlexTensor {
        // Both kernels read dy as one contiguous buffer: copy a strided one once, not twice.
        f32_contiguous(&dy)
    }
}

#[derive(Debug)]
struct ConvBackward<K>(PhantomData<K>);

impl<B: Backend, K: ConvKernels<B>> Backward<B, 2> for ConvBackward<K> {
    type State = (NodeId, NodeId, ConvGeom);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w] = ops.parents;
        let dy = K::prepare(grads.consume::<B>(&ops.node));
        let (x_state, w_state, g) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
        let w: FloatTensor<B> = checkpointer.retrieve_node_output(w_state);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, K::grad_input(&dy, &w, &g));
        }
        if let Some(node) = node_w {
            grads.register::<B>(node.id, K::grad_weight(&x, &dy, &g));
        }
    }
}

/// A bias-free convolution recorded on the autodiff graph (when either input is tracked).
pub(crate) fn conv2d<B: Backend, K: ConvKernels<B>>(
    x: FloatTensor<Autodiff<B>>,
    w: FloatTensor<Autodiff<B>>,
    g: ConvGeom,
) -> FloatTensor<Autodiff<B>> {
    match ConvBackward::<K>(PhantomData)
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(&x);
            let w_state = prep.checkpoint(&w);
            let y = K::forward(&x.primitive, &w.primitive, &g);
            prep.finish((x_state, w_state, g), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(K::forward(&x.primitive, &w.primitive, &g)),
    }
}
