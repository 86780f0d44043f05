//! The convolution as one operation of Burn's autodiff graph, with the forward pass and both
//! gradients computed by a [`ConvKernels`] implementation instead of the backend's defaults:
//! this crate's im2col + GEMM kernels on the flex CPU backend (`super::flex`), fixed-strategy
//! cubecl kernels on CUDA (`super::cuda`). Each runs in f32 or, with `--conv-precision bf16`,
//! in bf16 ([`crate::precision`]); the arithmetic is recorded in the node, so the backward runs
//! in the arithmetic the forward ran in.

use std::fmt::Debug;
use std::marker::PhantomData;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::FloatDType;

use super::ConvGeom;
use crate::precision::ConvPrecision;

/// A bias-free convolution's three computations on backend `B`. The value carries what the
/// implementation was configured with (e.g. the CUDA strategy) into the backward pass.
pub(crate) trait ConvKernels<B: Backend>: Clone + Debug + Send + Sync + 'static {
    /// The output of `x` convolved with `w`.
    fn forward(&self, x: &FloatTensor<B>, w: &FloatTensor<B>, g: &ConvGeom) -> FloatTensor<B>;
    /// The input's gradient from the output's (`dy`, as [`ConvKernels::prepare`] left it).
    fn grad_input(&self, dy: &FloatTensor<B>, w: &FloatTensor<B>, g: &ConvGeom) -> FloatTensor<B>;
    /// The weight's gradient from the output's.
    fn grad_weight(&self, x: &FloatTensor<B>, dy: &FloatTensor<B>, g: &ConvGeom) -> FloatTensor<B>;
    /// The output gradient in the form both gradient functions read in arithmetic `p`
    /// (default: as it comes).
    fn prepare(&self, dy: FloatTensor<B>, p: ConvPrecision) -> FloatTensor<B> {
        let _ = p;
        dy
    }
    /// An operand (`x` or `w`) in the form the kernels read in arithmetic `p`, made once in the
    /// forward and kept for the backward (default: as it comes). Every other method receives
    /// its operands in this form. On CUDA this is where a weight is packed for cuDNN, cast to
    /// bf16, or laid out channels-last, once per step instead of once per pass.
    fn prepare_operand(&self, t: FloatTensor<B>, p: ConvPrecision) -> FloatTensor<B> {
        let _ = p;
        t
    }
    /// `t` with every element rounded to bf16, in `t`'s dtype (default: Burn's casts there and
    /// back).
    fn round_bf16(&self, t: FloatTensor<B>) -> FloatTensor<B> {
        B::float_cast(B::float_cast(t, FloatDType::BF16), FloatDType::F32)
    }
    /// [`ConvKernels::forward`] in bf16 ([`super::precision`]); default: the f32 kernel between
    /// roundings of its operands and its result, which is what a bf16 kernel computes.
    fn forward_bf16(&self, x: &FloatTensor<B>, w: &FloatTensor<B>, g: &ConvGeom) -> FloatTensor<B> {
        let (x, w) = (self.round_bf16(x.clone()), self.round_bf16(w.clone()));
        self.round_bf16(self.forward(&x, &w, g))
    }
    /// [`ConvKernels::grad_input`] in bf16, as [`ConvKernels::forward_bf16`].
    fn grad_input_bf16(
        &self,
        dy: &FloatTensor<B>,
        w: &FloatTensor<B>,
        g: &ConvGeom,
    ) -> FloatTensor<B> {
        let (dy, w) = (self.round_bf16(dy.clone()), self.round_bf16(w.clone()));
        self.round_bf16(self.grad_input(&dy, &w, g))
    }
    /// [`ConvKernels::grad_weight`] in bf16, as [`ConvKernels::forward_bf16`].
    fn grad_weight_bf16(
        &self,
        x: &FloatTensor<B>,
        dy: &FloatTensor<B>,
        g: &ConvGeom,
    ) -> FloatTensor<B> {
        let (x, dy) = (self.round_bf16(x.clone()), self.round_bf16(dy.clone()));
        self.round_bf16(self.grad_weight(&x, &dy, g))
    }
}

/// [`ConvKernels::forward`] in arithmetic `p`, operands prepared here.
pub(crate) fn forward<B: Backend, K: ConvKernels<B>>(
    kernels: &K,
    p: ConvPrecision,
    x: &FloatTensor<B>,
    w: &FloatTensor<B>,
    g: &ConvGeom,
) -> FloatTensor<B> {
    let x = kernels.prepare_operand(x.clone(), p);
    let w = kernels.prepare_operand(w.clone(), p);
    forward_prepared(kernels, p, &x, &w, g)
}

/// [`ConvKernels::forward`] in arithmetic `p` on operands [`ConvKernels::prepare_operand`]
/// made.
fn forward_prepared<B: Backend, K: ConvKernels<B>>(
    kernels: &K,
    p: ConvPrecision,
    x: &FloatTensor<B>,
    w: &FloatTensor<B>,
    g: &ConvGeom,
) -> FloatTensor<B> {
    match p {
        ConvPrecision::F32 => kernels.forward(x, w, g),
        ConvPrecision::Bf16 => kernels.forward_bf16(x, w, g),
    }
}

#[derive(Debug)]
struct ConvBackward<K>(PhantomData<K>);

impl<B: Backend, K: ConvKernels<B>> Backward<B, 2> for ConvBackward<K> {
    /// The prepared input and weight ([`ConvKernels::prepare_operand`]), the geometry, the
    /// kernels and the arithmetic.
    type State = (FloatTensor<B>, FloatTensor<B>, ConvGeom, K, ConvPrecision);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let (x, w, g, kernels, precision) = ops.state;
        let dy = kernels.prepare(grads.consume::<B>(&ops.node), precision);
        let bf16 = precision == ConvPrecision::Bf16;
        if let Some(node) = node_x {
            let dx = if bf16 {
                kernels.grad_input_bf16(&dy, &w, &g)
            } else {
                kernels.grad_input(&dy, &w, &g)
            };
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_w {
            let dw = if bf16 {
                kernels.grad_weight_bf16(&x, &dy, &g)
            } else {
                kernels.grad_weight(&x, &dy, &g)
            };
            crate::tap::announce::<B>(node.id, &dw);
            grads.register::<B>(node.id, dw);
        }
    }
}

/// A bias-free convolution recorded on the autodiff graph (when either input is tracked), in
/// arithmetic `p`.
pub(crate) fn conv2d<B: Backend, K: ConvKernels<B>>(
    kernels: K,
    p: ConvPrecision,
    x: FloatTensor<Autodiff<B>>,
    w: FloatTensor<Autodiff<B>>,
    g: ConvGeom,
) -> FloatTensor<Autodiff<B>> {
    match ConvBackward::<K>(PhantomData)
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            // Prepared once: the forward reads them, the backward keeps them.
            let xp = kernels.prepare_operand(x.primitive, p);
            let wp = kernels.prepare_operand(w.primitive, p);
            let y = forward_prepared::<B, K>(&kernels, p, &xp, &wp, &g);
            prep.finish((xp, wp, g, kernels, p), y)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(forward::<B, K>(&kernels, p, &x.primitive, &w.primitive, &g))
        }
    }
}
