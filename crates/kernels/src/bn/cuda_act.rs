//! What follows a BatchNorm in a ResNet, fused into the cuDNN BatchNorm node (`cuda.rs`): the
//! residual add and the ReLU as one cubecl kernel over the node's fresh output, and the
//! ReLU's backward as one kernel, where Burn records an add node and a ReLU node (forward: an
//! add, a compare and a masked fill; backward: a compare and a masked fill, each a launch and a
//! full pass over the activation). On an H200 the ReLU's launches alone were 88 per ResNet-18
//! step and 2.9 ms of device time (benchmarks/RESULTS.md, 2026-12-04).
//!
//! Same arithmetic as Burn's ops: `y + residual` (one rounding), then `max(v, 0)` as a select
//! (`v <= 0` gives 0, as Burn's `mask_fill(lower_equal_elem(0), 0)`); the gradient passes where
//! the output is positive, as Burn's ReLU backward does.

use burn::tensor::DType;
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::cubecl::{calculate_cube_count_elemwise, CubeDim};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;

use crate::cudnn::device::contiguous;

type Cube = CubeTensor<CudaRuntime>;

/// `y = relu(y + residual)` in place; the add only with `add`, the ReLU only with `relu`
/// (`residual` is not read without `add`).
#[cube(launch)]
// Nested: `relu` is known when the kernel is compiled, `v <= 0` only when it runs.
#[allow(clippy::collapsible_if)]
fn add_relu_kernel(
    y: &mut Tensor<f32>,
    residual: &Tensor<f32>,
    #[comptime] add: bool,
    #[comptime] relu: bool,
) {
    if ABSOLUTE_POS >= y.len() {
        terminate!();
    }
    let i = ABSOLUTE_POS;
    let mut v = y[i];
    if add {
        v += residual[i];
    }
    if relu {
        if v <= 0.0 {
            v = 0.0;
        }
    }
    y[i] = v;
}

/// `dx = dy` where `y > 0`, else 0 (the ReLU's backward from its output).
#[cube(launch)]
fn relu_backward_kernel(dy: &Tensor<f32>, y: &Tensor<f32>, dx: &mut Tensor<f32>) {
    if ABSOLUTE_POS >= y.len() {
        terminate!();
    }
    let i = ABSOLUTE_POS;
    let mut g = dy[i];
    if y[i] <= 0.0 {
        g = 0.0;
    }
    dx[i] = g;
}

/// Grid for `n` elements.
fn grid(t: &Cube, n: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(&t.client, n);
    (calculate_cube_count_elemwise(&t.client, n, dim), dim)
}

/// Adds `residual` to `y` and applies the ReLU, in place. `y` must be a dense f32 tensor that
/// nothing else has read yet (the BatchNorm's fresh output); `residual` is made dense here.
///
/// # Panics
/// When the sizes or dtypes disagree (the node checks both before calling).
pub(crate) fn add_relu_in_place(y: &Cube, residual: Option<Cube>, relu: bool) {
    let n = y.meta.num_elements();
    assert_eq!(y.dtype, DType::F32, "fused BatchNorm activation: f32 only");
    let residual = residual.map(contiguous);
    if let Some(r) = &residual {
        assert_eq!(r.meta.num_elements(), n, "residual size");
        assert_eq!(r.dtype, DType::F32, "residual dtype");
    }
    if residual.is_none() && !relu {
        return;
    }
    let (count, dim) = grid(y, n);
    // Without a residual, `y` stands in for it (not read).
    let r = residual.as_ref().unwrap_or(y).clone();
    add_relu_kernel::launch::<CudaRuntime>(
        &y.client,
        count,
        dim,
        y.clone().into_tensor_arg(),
        r.into_tensor_arg(),
        residual.is_some(),
        relu,
    );
}

/// The ReLU's backward: `dy` where the ReLU's output `y` is positive, else 0 (a fresh tensor).
pub(crate) fn relu_backward(dy: Cube, y: &Cube) -> Cube {
    let dy = contiguous(dy);
    let n = y.meta.num_elements();
    assert_eq!(dy.meta.num_elements(), n, "ReLU gradient size");
    let dx = empty_device_contiguous_dtype(
        dy.client.clone(),
        dy.device.clone(),
        dy.meta.shape().clone(),
        DType::F32,
    );
    let (count, dim) = grid(y, n);
    let client = dy.client.clone();
    relu_backward_kernel::launch::<CudaRuntime>(
        &client,
        count,
        dim,
        dy.into_tensor_arg(),
        y.clone().into_tensor_arg(),
        dx.clone().into_tensor_arg(),
    );
    dx
}
