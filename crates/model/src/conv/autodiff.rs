//! The convolution as one operation of Burn's autodiff graph, with the forward pass and both
//! gradients computed by a [`ConvKernels`] implementation instead of the backend's defaults:
//! this crate's im2col + GEMM kernels on the flex CPU backend ([`FlexKernels`]), fixed-strategy
//! cubecl kernels on CUDA (`super::cuda`). Each runs in f32 or, with `--conv-precision bf16`,
//! in bf16 ([`super::precision`]).

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
use burn::tensor::{FloatDType, TensorData};

use super::kernels::{self, ConvGeom};
use super::precision::{conv_precision, round_bf16_slice, ConvPrecision};
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
    /// `t` with every element rounded to bf16, in `t`'s dtype (default: Burn's casts there and
    /// back).
    fn round_bf16(t: FloatTensor<B>) -> FloatTensor<B> {
        B::float_cast(B::float_cast(t, FloatDType::BF16), FloatDType::F32)
    }
    /// [`ConvKernels::forward`] in bf16 ([`super::precision`]); default: the f32 kernel between
    /// roundings of its operands and its result, which is what a bf16 kernel computes.
    fn forward_bf16(x: &FloatTensor<B>, w: &FloatTensor<B>, g: &ConvGeom) -> FloatTensor<B> {
        let (x, w) = (Self::round_bf16(x.clone()), Self::round_bf16(w.clone()));
        Self::round_bf16(Self::forward(&x, &w, g))
    }
    /// [`ConvKernels::grad_input`] in bf16, as [`ConvKernels::forward_bf16`].
    fn grad_input_bf16(dy: &FloatTensor<B>, w: &FloatTensor<B>, g: &ConvGeom) -> FloatTensor<B> {
        let (dy, w) = (Self::round_bf16(dy.clone()), Self::round_bf16(w.clone()));
        Self::round_bf16(Self::grad_input(&dy, &w, g))
    }
    /// [`ConvKernels::grad_weight`] in bf16, as [`ConvKernels::forward_bf16`].
    fn grad_weight_bf16(x: &FloatTensor<B>, dy: &FloatTensor<B>, g: &ConvGeom) -> FloatTensor<B> {
        let (x, dy) = (Self::round_bf16(x.clone()), Self::round_bf16(dy.clone()));
        Self::round_bf16(Self::grad_weight(&x, &dy, g))
    }
}

/// [`ConvKernels::forward`] in the process's convolution precision.
pub(crate) fn forward<B: Backend, K: ConvKernels<B>>(
    x: &FloatTensor<B>,
    w: &FloatTensor<B>,
    g: &ConvGeom,
) -> FloatTensor<B> {
    match conv_precision() {
        ConvPrecision::F32 => K::forward(x, w, g),
        ConvPrecision::Bf16 => K::forward_bf16(x, w, g),
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

    fn round_bf16(t: FlexTensor) -> FlexTensor {
        // In f32 storage, without flex's generic casts (which go through an f64 buffer).
        let shape = t.layout().shape().clone();
        let mut v = f32_contiguous(&t).storage::<f32>().to_vec();
        round_bf16_slice(&mut v);
        FlexTensor::from_data(TensorData::new(v, shape))
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
        let bf16 = conv_precision() == ConvPrecision::Bf16;
        if let Some(node) = node_x {
            let dx = if bf16 {
                K::grad_input_bf16(&dy, &w, &g)
            } else {
                K::grad_input(&dy, &w, &g)
            };
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_w {
            let dw = if bf16 {
                K::grad_weight_bf16(&x, &dy, &g)
            } else {
                K::grad_weight(&x, &dy, &g)
            };
            grads.register::<B>(node.id, dw);
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
            let y = forward::<B, K>(&x.primitive, &w.primitive, &g);
            prep.finish((x_state, w_state, g), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward::<B, K>(&x.primitive, &w.primitive, &g)),
    }
}
