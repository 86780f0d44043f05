//! What every cuDNN call in a process shares: the probe for the library, the stream it queues
//! on (and the counters of the few host synchronisations left), and the per-thread, per-device
//! state (handle, workspace, descriptors).
//!
//! **Stream ordering.** cubecl queues each thread's kernels on a stream of its own. Burn 0.21's
//! cubecl-cuda does not expose it, so the workspace patches it (vendor/cubecl-cuda/PATCHED.md):
//! a tensor's device resource names the stream that owns it. Every cuDNN call binds the handle
//! to the stream of the output it has just allocated (this thread's current cubecl stream), so
//! it runs after the kernels that wrote its operands and before any kernel that reads its
//! result, and memory cubecl frees and reuses is reused in stream order too: no host waits.
//! (Operands owned by another stream are ordered by cubecl itself when `get_resource` resolves
//! them, as for its own kernel launches.) Version 1 drained cubecl's stream and cuDNN's own
//! stream on the host around every call: about 200 synchronisations per ResNet-18 step, 11.8 ms
//! of a 58 ms step on an H200. The synchronisations left (a workspace that grows, an algorithm
//! search) are counted in `super::stats`, which `resnet bench` reports.
//!
//! **Threads.** A cuDNN handle must not be used by two threads at once, and the training loop
//! runs on one thread per replica, so the handles (and what hangs off them) are per thread and
//! device.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Instant;

use burn::tensor::DType;
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;

use super::conv_plan::{CudaMath, Dtype, Layout, Workspace};
use super::ffi::{self, BnDescriptors, Descriptors, DeviceBuffer, Handle};
use super::{decide, Availability};
use crate::geom::ConvGeom;

type Tensor = CubeTensor<CudaRuntime>;

/// Whether cuDNN is usable in this process, probed once. On the first "no" it warns once; the
/// callers then run their fallbacks.
pub(crate) fn available() -> bool {
    static STATE: OnceLock<Availability> = OnceLock::new();
    let a = STATE.get_or_init(|| {
        let a = decide(ffi::library_present(), ffi::version);
        match &a {
            Availability::Ready(v) => tracing::info!(cudnn_version = v, "cuDNN loaded"),
            Availability::Unavailable(why) => tracing::warn!(
                reason = %why,
                "cuDNN is not usable: convolutions run on the gemm kernels, BatchNorm on Burn's ops"
            ),
        }
        a
    });
    matches!(a, Availability::Ready(_))
}

/// Runs a synchronisation, counting it and the time it took.
pub(crate) fn timed_sync(f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    let t0 = Instant::now();
    let r = f();
    super::SYNCS.fetch_add(1, Ordering::Relaxed);
    super::SYNC_NANOS.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
    r
}

/// Counts a call that cuDNN declined or could not make (its fallback ran instead).
pub(crate) fn count_fallback() {
    super::FALLBACKS.fetch_add(1, Ordering::Relaxed);
}

/// A thread's cuDNN state on one device.
pub(crate) struct PerDevice {
    /// The handle (bound to cubecl's stream for this thread on each call).
    pub handle: Handle,
    /// The convolutions' shared workspace, and its growth rule.
    pub workspace: DeviceBuffer,
    pub plan: Workspace,
    /// Convolution descriptors per shape, dtype and math.
    pub conv: HashMap<(ConvGeom, Dtype, CudaMath, Layout), Descriptors>,
    /// BatchNorm descriptors per input shape `[n, c, h, w]`.
    pub bn: HashMap<[usize; 4], BnDescriptors>,
}

thread_local! {
    static DEVICES: RefCell<HashMap<usize, PerDevice>> = RefCell::new(HashMap::new());
}

/// Runs `f` with this thread's state for device `index` (created on first use, with a workspace
/// cap of `workspace_mb` MiB), its context made current and its handle bound to `stream`.
///
/// `stream` must come from a `GpuResource` of a tensor this thread allocated on that device
/// (cubecl's stream for this thread), which lives as long as the device's cubecl server.
pub(crate) fn with_device<R>(
    index: usize,
    workspace_mb: usize,
    stream: Stream,
    f: impl FnOnce(&mut PerDevice) -> Result<R, String>,
) -> Result<R, String> {
    DEVICES.with(|devices| {
        let mut devices = devices.borrow_mut();
        let dev = match devices.entry(index) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(PerDevice {
                handle: Handle::new(index)?,
                workspace: DeviceBuffer::new(0)?,
                plan: Workspace::with_cap_mb(workspace_mb),
                conv: HashMap::new(),
                bn: HashMap::new(),
            }),
        };
        dev.handle.make_current()?;
        // SAFETY: `stream` is cubecl's stream of this device for this thread (the contract
        // above): live for the process, on the context just made current.
        #[allow(unsafe_code)]
        unsafe {
            dev.handle.bind(stream.0)?
        };
        f(dev)
    })
}

/// The CUDA stream that owns a cubecl resource (the patched `GpuResource::stream`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stream(cudarc::driver::sys::CUstream);

impl Stream {
    /// `GpuResource::stream` of a tensor this thread allocated (the type is private to
    /// cubecl-cuda; its fields are not).
    pub(crate) fn new(stream: cudarc::driver::sys::CUstream) -> Self {
        Self(stream)
    }
}

/// The cuDNN element type of `t`, if cuDNN takes it.
pub(crate) fn dtype_of(t: &Tensor) -> Option<Dtype> {
    match t.dtype {
        DType::F32 => Some(Dtype::F32),
        DType::BF16 => Some(Dtype::Bf16),
        _ => None,
    }
}

/// `t` as a dense row-major tensor (itself when it already is), as the descriptors describe.
pub(crate) fn contiguous(t: Tensor) -> Tensor {
    if t.is_contiguous() && t.is_contiguous_buffer() {
        t
    } else {
        into_contiguous(t)
    }
}
