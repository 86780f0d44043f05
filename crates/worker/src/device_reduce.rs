//! NCCL on the trainer's flat gradient tensor where it lives (`--nccl-buffers device`): no copy
//! to the host and back, the step's only transfers are NCCL's own.
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
