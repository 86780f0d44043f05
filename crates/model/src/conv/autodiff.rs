//! The convolution as an operation of Burn's autodiff graph on the flex backend, with both
//! gradients computed by [`super::kernels`] instead of flex's defaults.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::ops::FloatTensor;

use super::kernels::{self, ConvGeom};
use super::{f32_contiguous, flex_forward, flex_from_vec};

/// The float tensor of `Autodiff<Flex>`: a flex tensor plus its graph node.
pub(crate) type AdTensor = FloatTensor<Autodiff<Flex>>;

#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 2> for ConvBackward {
    type State = (NodeId, NodeId, ConvGeom);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w] = ops.parents;
        let dy = f32_contiguous(&grads.consume::<Flex>(&ops.node));
        let (x_state, w_state, g) = ops.state;
        let x: FlexTensor = checkpointer.retrieve_node_output(x_state);
        let w: FlexTensor = checkpointer.retrieve_node_output(w_state);
        if let Some(node) = node_x {
            let w = f32_contiguous(&w);
            let dx = kernels::grad_input(&g, dy.storage::<f32>(), w.storage::<f32>());
            let shape = [g.batch, g.cin, g.in_hw[0], g.in_hw[1]];
            grads.register::<Flex>(node.id, flex_from_vec(dx, shape));
        }
        if let Some(node) = node_w {
            let x = f32_contiguous(&x);
            let dw = kernels::grad_weight(&g, x.storage::<f32>(), dy.storage::<f32>());
            let shape = [g.cout, g.cin, g.kernel[0], g.kernel[1]];
            grads.register::<Flex>(node.id, flex_from_vec(dw, shape));
        }
    }
}

/// A bias-free convolution recorded on the autodiff graph (when either input is tracked).
pub(crate) fn conv2d(x: AdTensor, w: AdTensor, g: ConvGeom) -> AdTensor {
    match ConvBackward
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(&x);
            let w_state = prep.checkpoint(&w);
            let y = flex_forward(&x.primitive, &w.primitive, &g);
            prep.finish((x_state, w_state, g), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(flex_forward(&x.primitive, &w.primitive, &g)),
    }
}
