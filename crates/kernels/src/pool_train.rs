//! Max pooling in training on the CPU (the ImageNet stem's 3x3/2 pool) as one autodiff node.
//!
//! Burn 0.21 records `max_pool2d` on `Autodiff<Flex>` as flex's `max_pool2d_with_indices` (a
//! branchy 3-D loop with a 64-bit index per output) and a single-threaded scatter backward: ~5 %
//! of a ResNet-18 ImageNet-stem training step here. This node computes exactly Burn's values
//! and gradient, bit for bit (`tests/conv.rs` compares forward and gradient on ties, NaNs and
//! odd sizes):
//! - forward: per window, the first element inside the image, then each strictly greater one,
//!   scanned rows then columns (Burn's with-indices rule: a NaN first element stays; a later
//!   NaN never wins); the winner's position in its plane is kept for the backward;
//! - backward: each output's gradient added to its winner's position, in output order within a
//!   plane (Burn's order, so positions that win several windows sum in the same order), planes
//!   in parallel.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorData;
use rayon::prelude::*;

use crate::geom::PoolGeom;

/// Output values per rayon task, as in the evaluation pool.
const PER_TASK: usize = 16384;

/// "No winner": a window entirely in the padding.
const NONE: u32 = u32::MAX;

/// Winner positions of one pooling, `[planes * out_h * out_w]`, each within its input plane.
type Winners = Arc<Vec<u32>>;

#[derive(Debug)]
struct PoolBackward;

impl Backward<Flex, 1> for PoolBackward {
    /// Winners, geometry, input shape `[n, c, h, w]`.
    type State = (Winners, PoolGeom, [usize; 4]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let (winners, g, shape) = ops.state;
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        if let Some(node) = node_x {
            let dx = scatter(&g, &winners, dy.storage::<f32>());
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, shape)));
        }
    }
}

/// `x: [n, c, h, w]` (f32, contiguous) max-pooled with geometry `g`, recorded for the backward
/// when `x` is tracked.
pub(crate) fn max_pool2d(
    x: FloatTensor<Autodiff<Flex>>,
    g: PoolGeom,
) -> FloatTensor<Autodiff<Flex>> {
    let input = x.primitive.to_contiguous();
    let shape: [usize; 4] = {
        let s = input.layout().shape();
        [s[0], s[1], s[2], s[3]]
    };
    let out_shape = [shape[0], shape[1], g.out_hw[0], g.out_hw[1]];
    let (y, winners) = forward(&g, input.storage::<f32>());
    let y = FlexTensor::from_data(TensorData::new(y, out_shape));
    match PoolBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((Arc::new(winners), g, shape), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// The pooled values and each output's winner (see the module docs).
pub(crate) fn forward(g: &PoolGeom, x: &[f32]) -> (Vec<f32>, Vec<u32>) {
    let (plane_in, plane_out) = (g.in_hw[0] * g.in_hw[1], g.out_hw[0] * g.out_hw[1]);
    if plane_in == 0 || plane_out == 0 {
        return (Vec::new(), Vec::new());
    }
    assert_eq!(x.len() % plane_in, 0, "max pool: input is not whole planes");
    assert!(plane_in < NONE as usize, "max pool: plane too large");
    let planes = x.len() / plane_in;
    let mut y = vec![0.0f32; planes * plane_out];
    let mut idx = vec![0u32; planes * plane_out];
    let per = (PER_TASK / plane_out).max(1);
    y.par_chunks_mut(per * plane_out)
        .zip(idx.par_chunks_mut(per * plane_out))
        .zip(x.par_chunks(per * plane_in))
        .for_each(|((y, idx), x)| {
            for ((y, idx), x) in y
                .chunks_exact_mut(plane_out)
                .zip(idx.chunks_exact_mut(plane_out))
                .zip(x.chunks_exact(plane_in))
            {
                plane(g, x, y, idx);
            }
        });
    (y, idx)
}

/// One plane of the forward.
fn plane(g: &PoolGeom, x: &[f32], y: &mut [f32], idx: &mut [u32]) {
    let ([h, w], [kh, kw], [sh, sw], [ph, pw], [_, ow]) =
        (g.in_hw, g.kernel, g.stride, g.pad, g.out_hw);
    for (oy, (y_row, i_row)) in y
        .chunks_exact_mut(ow)
        .zip(idx.chunks_exact_mut(ow))
        .enumerate()
    {
        let y0 = (oy * sh).saturating_sub(ph);
        let y1 = (oy * sh + kh).saturating_sub(ph).min(h);
        for (ox, (out, win)) in y_row.iter_mut().zip(i_row.iter_mut()).enumerate() {
            let x0 = (ox * sw).saturating_sub(pw);
            let x1 = (ox * sw + kw).saturating_sub(pw).min(w);
            if y0 >= y1 || x0 >= x1 {
                // A window entirely in the padding: Burn's -inf and no winner.
                *out = f32::NEG_INFINITY;
                *win = NONE;
                continue;
            }
            let mut best = x[y0 * w + x0];
            let mut at = y0 * w + x0;
            for iy in y0..y1 {
                let row = iy * w;
                for (j, &v) in x[row + x0..row + x1].iter().enumerate() {
                    if v > best {
                        best = v;
                        at = row + x0 + j;
                    }
                }
            }
            *out = best;
            *win = at as u32;
        }
    }
}

/// The input gradient: each output's gradient added at its winner, in output order per plane.
pub(crate) fn scatter(g: &PoolGeom, winners: &[u32], dy: &[f32]) -> Vec<f32> {
    let (plane_in, plane_out) = (g.in_hw[0] * g.in_hw[1], g.out_hw[0] * g.out_hw[1]);
    assert_eq!(
        winners.len(),
        dy.len(),
        "max pool backward: gradient length"
    );
    if plane_in == 0 || plane_out == 0 {
        return Vec::new();
    }
    let planes = dy.len() / plane_out;
    let mut dx = vec![0.0f32; planes * plane_in];
    let per = (PER_TASK / plane_out).max(1);
    dx.par_chunks_mut(per * plane_in)
        .zip(dy.par_chunks(per * plane_out))
        .zip(winners.par_chunks(per * plane_out))
        .for_each(|((dx, dy), win)| {
            for ((dx, dy), win) in dx
                .chunks_exact_mut(plane_in)
                .zip(dy.chunks_exact(plane_out))
                .zip(win.chunks_exact(plane_out))
            {
                for (&d, &at) in dy.iter().zip(win) {
                    if at != NONE {
                        dx[at as usize] += d;
                    }
                }
            }
        });
    dx
}
