//! NCCL all-reduce through cudarc (the library is loaded at run time: PyTorch's pip wheels ship
//! `libnccl.so.2` under `site-packages/nvidia/nccl/lib`). Compiled with the `nccl` feature.
//!
//! Rank 0 creates the unique id ([`unique_id`]); every rank builds its communicator from it on
//! its device's primary context with a stream of its own. This first version implements the
//! host-buffer [`Collective`] trait: each call stages the buffer on the device (one reused
//! allocation), runs one NCCL call and copies the result back. The trainer hands over all
//! gradients as one flat buffer, so a step is still a single NCCL call; what it costs over an
//! on-device all-reduce is two PCIe copies of the gradients.
//!
//! [`NcclCollective::all_reduce_sum_device`] skips that staging for a buffer that already lives
//! on the GPU (the worker's `--nccl-buffers device`: the trainer's flat gradient tensor, whose
//! address comes from cubecl). cubecl allocates on the device's primary context, the same one
//! the communicator uses, so its addresses are valid here.

use std::os::raw::c_char;
use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::{
    sys, CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceSlice, SyncOnDrop,
};
use cudarc::nccl::{Comm, Id, ReduceOp};

use crate::tcp::RingAbort;
use crate::{wait_for, Collective, CollectiveError};

/// Length of an NCCL unique id.
pub const ID_BYTES: usize = 128;

fn setup(what: &str, e: impl std::fmt::Debug) -> CollectiveError {
    CollectiveError::Setup(format!("NCCL {what}: {e:?}"))
}

/// A fresh NCCL unique id (made by the rank that will be rank 0: it also starts NCCL's
/// bootstrap listener in this process).
pub fn unique_id() -> Result<[u8; ID_BYTES], CollectiveError> {
    let id = Id::new().map_err(|e| setup("unique id (is libnccl.so.2 on the library path?)", e))?;
    Ok(id.internal().map(|c| c as u8))
}

/// `sm_XY`, the architecture of CUDA device `gpu` (through the driver only, no NCCL): compiled
/// kernels are specific to it, so caches of them are kept per architecture.
pub fn device_arch(gpu: usize) -> Result<String, CollectiveError> {
    let err = |e| CollectiveError::Setup(format!("CUDA device {gpu}: {e:?}"));
    let ctx = CudaContext::new(gpu).map_err(err)?;
    let (major, minor) = ctx.compute_capability().map_err(err)?;
    Ok(format!("sm_{major}{minor}"))
}

/// One rank of an NCCL communicator.
pub struct NcclCollective {
    // (Field order is drop order: the communicator, whose drop aborts it, goes before `kept`,
    // so buffers an unfinished operation may still write are released only after the abort.)
    comm: Comm,
    stream: Arc<CudaStream>,
    staging: Option<CudaSlice<f32>>,
    rank: usize,
    world: usize,
    /// How long one operation may wait for the other ranks.
    timeout: Duration,
    /// Raised by the worker when the coordinator starts a new generation.
    abort: RingAbort,
    /// Whether callers should hand over device buffers ([`Self::all_reduce_sum_device`]).
    device_buffers: bool,
    /// What the queued operations read and write, held until they are known to be done
    /// ([`Self::finish_queued`]).
    kept: Vec<Box<dyn std::any::Any + Send>>,
}

/// Device memory that belongs to someone else (cubecl's allocator), seen by cudarc as a slice
/// of `len` f32 at `ptr`. Ordering with the owner's stream is the caller's job, so the pointer
/// getters schedule no waits and their guards do nothing.
struct Foreign {
    ptr: sys::CUdeviceptr,
    len: usize,
    stream: Arc<CudaStream>,
}

impl DeviceSlice<f32> for Foreign {
    fn len(&self) -> usize {
        self.len
    }
    fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

impl DevicePtr<f32> for Foreign {
    fn device_ptr<'a>(&'a self, _stream: &'a CudaStream) -> (sys::CUdeviceptr, SyncOnDrop<'a>) {
        (self.ptr, SyncOnDrop::Sync(None))
    }
}

impl DevicePtrMut<f32> for Foreign {
    fn device_ptr_mut<'a>(
        &'a mut self,
        _stream: &'a CudaStream,
    ) -> (sys::CUdeviceptr, SyncOnDrop<'a>) {
        (self.ptr, SyncOnDrop::Sync(None))
    }
}

impl NcclCollective {
    /// Joins communicator `id` as `rank` of `world` on CUDA device `gpu`. Blocks until every
    /// rank has joined (NCCL's own rendezvous over the id's bootstrap address).
    pub fn new(
        gpu: usize,
        rank: usize,
        world: usize,
        id: &[u8; ID_BYTES],
    ) -> Result<Self, CollectiveError> {
        let ctx = CudaContext::new(gpu).map_err(|e| setup(&format!("CUDA device {gpu}"), e))?;
        let stream = ctx.new_stream().map_err(|e| setup("stream", e))?;
        let id = Id::uninit(id.map(|b| b as c_char));
        let comm = Comm::from_rank(stream.clone(), rank, world, id)
            .map_err(|e| setup(&format!("communicator (rank {rank} of {world})"), e))?;
        Ok(Self {
            comm,
            stream,
            staging: None,
            rank,
            world,
            timeout: Duration::from_secs(300),
            abort: RingAbort::default(),
            device_buffers: false,
            kept: Vec::new(),
        })
    }

    /// Gives every operation at most `timeout` (default 300 s) before it fails with
    /// [`CollectiveError::Timeout`]; the caller then drops the collective, which aborts the
    /// communicator (cudarc's `Drop` calls `ncclCommAbort`).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A handle that makes a waiting operation return at once (generation change).
    pub fn abort_handle(&self) -> RingAbort {
        self.abort.clone()
    }

    /// Asks callers to hand over device buffers instead of host slices (`--nccl-buffers
    /// device`); the collective itself accepts both either way.
    pub fn with_device_buffers(mut self, on: bool) -> Self {
        self.device_buffers = on;
        self
    }

    /// Whether [`Self::with_device_buffers`] was set.
    pub fn device_buffers(&self) -> bool {
        self.device_buffers
    }

    /// Element-wise sum over all ranks of `len` f32 read at device address `send`, written to
    /// `recv` (the same address for in place), without staging through the host. Waits for
    /// completion under the timeout and the abort flag, like the host path.
    ///
    /// # Safety
    /// `send` and `recv` must each address `len` f32 of device memory on this communicator's
    /// device, allocated in its primary context, whose earlier writes have completed, and that
    /// nothing else reads or writes until this returns.
    #[allow(unsafe_code)]
    pub unsafe fn all_reduce_sum_device(
        &mut self,
        send: u64,
        recv: u64,
        len: usize,
    ) -> Result<(), CollectiveError> {
        // SAFETY: the caller's contract (above) covers the queued call's; the buffers are the
        // caller's, so nothing needs keeping, and this waits for completion before returning.
        unsafe { self.all_reduce_sum_device_queued(send, recv, len, Box::new(())) }?;
        self.finish_queued()
    }

    /// Makes this communicator's stream wait, on the device (no host wait), for everything
    /// queued on `foreign` so far: an event recorded there, waited on here.
    ///
    /// # Safety
    /// `foreign` must be a live stream of this communicator's device and primary context.
    #[allow(unsafe_code)]
    pub unsafe fn wait_for_stream(&self, foreign: sys::CUstream) -> Result<(), CollectiveError> {
        use cudarc::driver::result::{event, stream};
        let e = event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map_err(|e| setup("event", e))?;
        // SAFETY: `e` was just created; `foreign` is live (the caller's contract) and so is this
        // communicator's stream. Destroying an event that a stream still waits on is allowed:
        // the wait keeps the state recorded at the call, and CUDA releases the event afterwards.
        let r = unsafe {
            event::record(e, foreign).and_then(|()| {
                stream::wait_event(
                    self.stream.cu_stream(),
                    e,
                    sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                )
            })
        };
        // SAFETY: `e` is ours and used by nothing after this (see above).
        let d = unsafe { event::destroy(e) };
        r.and(d)
            .map_err(|e| setup("ordering after the compute stream", e))
    }

    /// Queues the element-wise sum over all ranks of `len` f32 at device address `send` into
    /// `recv` (the same address for in place) on this communicator's stream and returns at
    /// once; `keep` (what owns the two
    /// buffers) is held until [`Self::finish_queued`]. Call [`Self::wait_for_stream`] first
    /// for the stream that wrote `send`.
    ///
    /// # Safety
    /// `send` and `recv` must each address `len` f32 of device memory on this communicator's
    /// device, in its primary context, kept alive by `keep`; nothing may write `send` or touch
    /// `recv` until [`Self::finish_queued`] has returned `Ok`.
    #[allow(unsafe_code)]
    pub unsafe fn all_reduce_sum_device_queued(
        &mut self,
        send: u64,
        recv: u64,
        len: usize,
        keep: Box<dyn std::any::Any + Send>,
    ) -> Result<(), CollectiveError> {
        self.kept.push(keep);
        if len == 0 {
            return Ok(());
        }
        let foreign = |ptr| Foreign {
            ptr,
            len,
            stream: self.stream.clone(),
        };
        let mut dst = foreign(recv);
        let r = if send == recv {
            self.comm.all_reduce_in_place(&mut dst, &ReduceOp::Sum)
        } else {
            self.comm
                .all_reduce(&foreign(send), &mut dst, &ReduceOp::Sum)
        };
        r.map_err(|e| setup("all-reduce (device buffers)", e))?;
        Ok(())
    }

    /// Waits, under the timeout and the abort flag, until every queued operation is done, then
    /// releases what [`Self::all_reduce_sum_device_queued`] kept. On an error the buffers stay
    /// held until the communicator is dropped (and aborted): NCCL may still write them.
    pub fn finish_queued(&mut self) -> Result<(), CollectiveError> {
        self.wait()?;
        self.kept.clear();
        Ok(())
    }

    /// The device buffer for `n` floats, holding `buf`.
    fn stage(&mut self, buf: &[f32]) -> Result<&mut CudaSlice<f32>, CollectiveError> {
        let fits = self.staging.as_ref().is_some_and(|s| s.len() == buf.len());
        if !fits {
            let s = self
                .stream
                .alloc_zeros::<f32>(buf.len())
                .map_err(|e| setup("device allocation", e))?;
            self.staging = Some(s);
        }
        let stream = self.stream.clone();
        let dev = self
            .staging
            .as_mut()
            .ok_or_else(|| CollectiveError::Setup("staging buffer missing".into()))?;
        stream
            .memcpy_htod(buf, dev)
            .map_err(|e| setup("host-to-device copy", e))?;
        Ok(dev)
    }

    /// Copies `buf` to the device, runs `op` there, copies the result back.
    fn staged(
        &mut self,
        buf: &mut [f32],
        what: &str,
        op: impl FnOnce(
            &Comm,
            &mut CudaSlice<f32>,
        )
            -> Result<cudarc::nccl::result::NcclStatus, cudarc::nccl::result::NcclError>,
    ) -> Result<(), CollectiveError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.stage(buf)?;
        let dev = self
            .staging
            .as_mut()
            .ok_or_else(|| CollectiveError::Setup("staging buffer missing".into()))?;
        op(&self.comm, dev).map_err(|e| setup(what, e))?;
        self.unstage(buf)
    }

    fn unstage(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        let dev = self
            .staging
            .as_ref()
            .ok_or_else(|| CollectiveError::Setup("staging buffer missing".into()))?;
        self.stream
            .memcpy_dtoh(dev, buf)
            .map_err(|e| setup("device-to-host copy", e))?;
        self.wait()
    }

    /// Waits for everything queued on the stream so far.
    fn wait(&self) -> Result<(), CollectiveError> {
        // Not `synchronize()`: that blocks without limit while a peer that died keeps the
        // NCCL kernel waiting. Poll an event with the timeout and the abort flag instead.
        let done = self
            .stream
            .record_event(None)
            .map_err(|e| setup("record event", e))?;
        let next = (self.rank + 1) % self.world.max(1);
        wait_for(
            || done.try_is_complete().map_err(|e| setup("operation", e)),
            self.timeout,
            &self.abort,
            next,
        )
    }
}

// SAFETY: an NCCL communicator may be used from any thread, just not from two at once
// (NCCL user guide, "Thread safety"); every operation here takes `&mut self`, so the borrow
// checker serialises them. cudarc leaves `Comm` !Send only because it holds a raw pointer.
#[allow(unsafe_code)]
unsafe impl Send for NcclCollective {}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn as_nccl(&mut self) -> Option<&mut NcclCollective> {
        Some(self)
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        self.staged(buf, "all-reduce", |comm, dev| {
            comm.all_reduce_in_place(dev, &ReduceOp::Sum)
        })
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        self.staged(buf, "broadcast", |comm, dev| {
            comm.broadcast_in_place(dev, root as i32)
        })
    }
}
