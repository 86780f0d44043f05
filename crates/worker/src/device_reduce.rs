//! NCCL on the trainer's flat gradient tensor where it lives (`--nccl-buffers device`): no copy
//! to the host and back, the step's only transfers are NCCL's own.
//!
//! With `overlap` the same happens per bucket while the backward pass runs
//! ([`start_bucket_sum`], [`finish_buckets`]): NCCL queues each bucket on its own stream,
//! ordered after cubecl's by an event (a device-side wait, no host wait), into a fresh tensor;
//! the step waits once, after the backward, under the collective's timeout.
//!
//! The tensor belongs to cubecl. Its device address comes from cubecl's memory manager; cubecl's
//! stream is drained first (its kernels that wrote the buffer must have finished before NCCL,
//! on a stream of its own, reads it) and the result goes to a fresh tensor, so NCCL never
//! writes memory that a Burn tensor still reads. Out of place also makes the world-size-1 check
//! meaningful: NCCL must copy the right bytes for the result to match.

use std::any::Any;

use burn::tensor::{DType, Tensor};
use burn_cubecl::cubecl::future::block_on;
use resnet_collective::nccl::NcclCollective;
use resnet_collective::Collective;
use resnet_kernels::backends::CudaPlain;

/// The mean over the ranks of `flat` when it is a contiguous f32 `Tensor<CudaPlain, 1>` and
/// `collective` is an NCCL communicator asked for device buffers; `None` otherwise (the
/// trainer then takes the host path; with `--cuda-fusion on` the tensor type differs).
pub fn all_reduce_mean(
    collective: &mut dyn Collective,
    flat: &mut dyn Any,
) -> Option<Result<(), resnet_train::SyncError>> {
    let nccl = collective.as_nccl().filter(|n| n.device_buffers())?;
    let usable = flat.downcast_mut::<Tensor<CudaPlain, 1>>().filter(|t| {
        let prim = Tensor::clone(t).into_primitive().tensor();
        prim.dtype == DType::F32 && prim.is_contiguous()
    });
    let Some(t) = usable else {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                "--nccl-buffers device needs the unfused f32 CUDA backend (--cuda-conv cudnn, gemm or \
                 direct); staging the gradients through the host instead"
            )
        });
        return None;
    };
    // NCCL reports a lost peer as a failed call (after the abort): re-forming the group is what
    // helps, as for the TCP ring.
    Some(
        mean_into_fresh(nccl, t)
            .map_err(|e| resnet_train::SyncError::PeerLost(format!("NCCL on device buffers: {e}"))),
    )
}

fn mean_into_fresh(nccl: &mut NcclCollective, t: &mut Tensor<CudaPlain, 1>) -> Result<(), String> {
    let n = t.dims()[0];
    let out = Tensor::<CudaPlain, 1>::empty([n], &t.device());
    let (src, dst) = (
        t.clone().into_primitive().tensor(),
        out.clone().into_primitive().tensor(),
    );
    // The managed resources keep both allocations pinned until NCCL is done with them.
    let src_res = src
        .client
        .get_resource(src.handle.clone())
        .map_err(|e| format!("gradient buffer address: {e:?}"))?;
    let dst_res = dst
        .client
        .get_resource(dst.handle.clone())
        .map_err(|e| format!("result buffer address: {e:?}"))?;
    block_on(src.client.sync()).map_err(|e| format!("waiting for the backward pass: {e:?}"))?;
    // SAFETY: both addresses are live cubecl allocations of `n` f32 (contiguous f32 checked by
    // the caller, `out` made here) on this communicator's device and primary context; cubecl's
    // stream was drained above and this thread queues nothing on it until NCCL has finished
    // (`all_reduce_sum_device` waits for completion).
    #[allow(unsafe_code)]
    unsafe { nccl.all_reduce_sum_device(src_res.resource().ptr, dst_res.resource().ptr, n) }
        .map_err(|e| e.to_string())?;
    drop((src_res, dst_res));
    let world = nccl.world();
    // The same division as the host path (`Collective::all_reduce_mean`).
    *t = if world > 1 {
        out.div_scalar(world as f32)
    } else {
        out
    };
    Ok(())
}

/// A lost peer or a failed NCCL call, as the trainer's error (re-forming the group helps).
fn lost(what: &str, e: impl std::fmt::Display) -> resnet_train::SyncError {
    resnet_train::SyncError::PeerLost(format!("NCCL on device buckets: {what}: {e}"))
}

/// Whether the overlapped all-reduce can keep its buckets on the device: an NCCL communicator
/// asked for device buffers, and the trainer's tensors are the unfused CUDA backend's.
pub fn takes_buckets(collective: &mut dyn Collective, probe: &dyn Any) -> bool {
    collective.as_nccl().is_some_and(|n| n.device_buffers()) && probe.is::<Tensor<CudaPlain, 1>>()
}

/// Queues the sum of one gradient bucket (a contiguous f32 `Tensor<CudaPlain, 1>` behind
/// `Any`) over the ranks into a fresh tensor, which replaces it; NCCL's stream first waits, on
/// the device, for what cubecl has queued so far (the kernels that wrote the bucket).
pub fn start_bucket_sum(
    collective: &mut dyn Collective,
    bucket: &mut dyn Any,
) -> Result<(), resnet_train::SyncError> {
    let nccl = collective
        .as_nccl()
        .filter(|n| n.device_buffers())
        .ok_or_else(|| lost("setup", "not an NCCL communicator with device buffers"))?;
    let t = bucket
        .downcast_mut::<Tensor<CudaPlain, 1>>()
        .ok_or_else(|| lost("setup", "the bucket is not a Tensor<CudaPlain, 1>"))?;
    let n = t.dims()[0];
    let src = t.clone().into_primitive().tensor();
    if src.dtype != DType::F32 {
        return Err(lost("setup", "the bucket is not an f32 tensor"));
    }
    // NCCL reads `n` dense floats (a bucket is a concatenation, so this is rarely a copy).
    let src = if src.is_contiguous() && src.is_contiguous_buffer() {
        src
    } else {
        burn_cubecl::kernel::into_contiguous(src)
    };
    // Allocated on cubecl's stream before the event below, so whatever last used this memory
    // there is finished before NCCL writes it.
    let out = Tensor::<CudaPlain, 1>::empty([n], &t.device());
    let dst = out.clone().into_primitive().tensor();
    let src_res = src
        .client
        .get_resource(src.handle.clone())
        .map_err(|e| lost("bucket address", format!("{e:?}")))?;
    let dst_res = dst
        .client
        .get_resource(dst.handle.clone())
        .map_err(|e| lost("result address", format!("{e:?}")))?;
    let (send, recv) = (src_res.resource().ptr, dst_res.resource().ptr);
    let compute = dst_res.resource().stream;
    // SAFETY: `compute` is cubecl's stream for this thread on the communicator's device (the
    // stream `out` was just allocated on; cubecl streams live as long as its server).
    #[allow(unsafe_code)]
    unsafe { nccl.wait_for_stream(compute) }.map_err(|e| lost("ordering", e))?;
    // SAFETY: both addresses are live cubecl allocations of `n` f32 on this device's primary
    // context (dense f32, made so above; `out` made here), kept alive, with their managed
    // resources, by `keep` until `finish_queued` has seen the operation complete; NCCL's stream
    // runs it after everything cubecl queued before (the event above). Nothing writes the
    // bucket afterwards (the trainer only reads it), and `out` is read only after
    // `finish_buckets`.
    let keep: Box<dyn Any + Send> = Box::new((src, dst, src_res, dst_res));
    #[allow(unsafe_code)]
    unsafe { nccl.all_reduce_sum_device_queued(send, recv, n, keep) }
        .map_err(|e| lost("all-reduce", e))?;
    *t = out;
    Ok(())
}

/// Waits for every queued bucket (under the collective's timeout and abort flag).
pub fn finish_buckets(collective: &mut dyn Collective) -> Result<(), resnet_train::SyncError> {
    match collective.as_nccl() {
        Some(n) => n
            .finish_queued()
            .map_err(|e| lost("waiting for the buckets", e)),
        None => Ok(()),
    }
}
