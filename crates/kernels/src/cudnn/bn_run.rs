//! Training-mode BatchNorm through cuDNN on cubecl tensors (f32, NCHW): the forward saves the
//! batch mean and inverse standard deviation, which the backward reads back. Stream ordering
//! (cubecl's stream, no host waits) and the handle are `super::device`'s; the autodiff node around these is `crate::bn::cuda`.

use std::collections::HashMap;
use std::ffi::c_void;

use burn::tensor::{DType, Shape};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::bn_plan::plan;
use super::device::{contiguous, with_device, Stream};
use super::ffi::{self, BnBackward, BnDescriptors, BnForward};

type Tensor = CubeTensor<CudaRuntime>;

/// What the forward returns: the output, the batch's mean and `1 / sqrt(biased var + eps)`
/// (`[c]` each), and the input as the backward must read it (dense).
#[derive(Clone, Debug)]
pub(crate) struct Forward {
    pub y: Tensor,
    pub mean: Tensor,
    pub invstd: Tensor,
    pub x: Tensor,
}

/// The gradients of the input, gamma and beta.
pub(crate) struct Backward {
    pub dx: Tensor,
    pub dgamma: Tensor,
    pub dbeta: Tensor,
}

fn empty(like: &Tensor, shape: Shape) -> Tensor {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, DType::F32)
}

fn check_f32(ts: &[&Tensor]) -> Result<(), String> {
    match ts.iter().find(|t| t.dtype != DType::F32) {
        Some(t) => Err(format!("BatchNorm in {:?} (cuDNN path is f32)", t.dtype)),
        None => Ok(()),
    }
}

/// This thread's descriptors for `dims`, made on first use.
fn descriptors(
    map: &mut HashMap<[usize; 4], BnDescriptors>,
    dims: [usize; 4],
    eps: f64,
) -> Result<&BnDescriptors, String> {
    use std::collections::hash_map::Entry;
    Ok(match map.entry(dims) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => {
            let p = plan(dims, eps).map_err(|e| e.to_string())?;
            e.insert(BnDescriptors::new(&p)?)
        }
    })
}

/// Device addresses of `ts`, held (and so kept alive) by the returned guards until they drop.
macro_rules! addresses {
    ($client:expr, $($t:expr),+) => {{
        let guards = ($(
            $client.get_resource($t.handle.clone()).map_err(|e| format!("{e:?}"))?,
        )+);
        guards
    }};
}

/// The training-mode forward of `x: [n, c, h, w]` with per-channel `gamma`, `beta`. `Err` says
/// why cuDNN did not run it (nothing of the caller's has been written then).
pub(crate) fn forward(
    x: Tensor,
    gamma: Tensor,
    beta: Tensor,
    dims: [usize; 4],
    eps: f64,
    workspace_mb: usize,
) -> Result<Forward, String> {
    check_f32(&[&x, &gamma, &beta])?;
    plan(dims, eps).map_err(|e| e.to_string())?;
    let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
    let client = x.client.clone();
    let y = empty(&x, Shape::new(dims));
    let mean = empty(&x, Shape::new([dims[1]]));
    let invstd = empty(&x, Shape::new([dims[1]]));
    let (rx, rg, rb, ry, rm, ri) = addresses!(client, x, gamma, beta, y, mean, invstd);
    let a = BnForward {
        x: rx.resource().ptr as *const c_void,
        gamma: rg.resource().ptr as *const c_void,
        beta: rb.resource().ptr as *const c_void,
        y: ry.resource().ptr as *mut c_void,
        mean: rm.resource().ptr as *mut c_void,
        invstd: ri.resource().ptr as *mut c_void,
    };
    // cubecl's stream for this thread: `y` was just allocated here.
    let stream = Stream::new(ry.resource().stream);
    with_device(x.device.index, workspace_mb, stream, |dev| {
        let d = descriptors(&mut dev.bn, dims, eps)?;
        // SAFETY: every address is a live cubecl allocation; all are f32 (checked), dense
        // (`contiguous`, fresh allocations) and of the sizes `d` describes (`x`, `y`: `dims`;
        // the rest `[c]`). The call is queued on cubecl's stream (the handle is bound to it):
        // after the kernels that wrote the inputs, before whatever reads the outputs or reuses
        // the inputs' memory once the guards drop.
        #[allow(unsafe_code)]
        unsafe {
            ffi::bn_forward(&dev.handle, d, &a, eps)
        }
    })?;
    drop((rx, rg, rb, ry, rm, ri));
    Ok(Forward { y, mean, invstd, x })
}

/// The backward of [`forward`]: `x` and the saved statistics are what it returned.
pub(crate) fn backward(
    f: &Forward,
    gamma: &Tensor,
    dy: Tensor,
    dims: [usize; 4],
    eps: f64,
    workspace_mb: usize,
) -> Result<Backward, String> {
    check_f32(&[&dy, gamma])?;
    let (dy, gamma) = (contiguous(dy), contiguous(gamma.clone()));
    let client = dy.client.clone();
    let dx = empty(&dy, Shape::new(dims));
    let dgamma = empty(&dy, Shape::new([dims[1]]));
    let dbeta = empty(&dy, Shape::new([dims[1]]));
    let (rx, rdy, rg, rm, ri, rdx, rdg, rdb) =
        addresses!(client, f.x, dy, gamma, f.mean, f.invstd, dx, dgamma, dbeta);
    let a = BnBackward {
        x: rx.resource().ptr as *const c_void,
        dy: rdy.resource().ptr as *const c_void,
        gamma: rg.resource().ptr as *const c_void,
        mean: rm.resource().ptr as *const c_void,
        invstd: ri.resource().ptr as *const c_void,
        dx: rdx.resource().ptr as *mut c_void,
        dgamma: rdg.resource().ptr as *mut c_void,
        dbeta: rdb.resource().ptr as *mut c_void,
    };
    let stream = Stream::new(rdx.resource().stream);
    with_device(dy.device.index, workspace_mb, stream, |dev| {
        let d = descriptors(&mut dev.bn, dims, eps)?;
        // SAFETY: as in `forward`: live, dense f32 allocations of the described sizes, queued
        // in order on cubecl's stream; `mean`/`invstd` were saved by the forward on this `x`
        // with this `eps`.
        #[allow(unsafe_code)]
        unsafe {
            ffi::bn_backward(&dev.handle, d, &a, eps)
        }
    })?;
    drop((rx, rdy, rg, rm, ri, rdx, rdg, rdb));
    Ok(Backward { dx, dgamma, dbeta })
}
