//! A cuDNN handle that queues on cubecl's stream, and device memory outside cubecl's pools.

use std::ffi::c_void;

use cudarc::cudnn::sys;
use cudarc::driver::result as drv;
use cudarc::driver::sys as cu;

use super::{check, Result};

/// A cuDNN handle on the current context, queueing on whichever stream it was last bound to
/// (cubecl's stream for this thread: see `super::super::device`).
pub(crate) struct Handle {
    pub(super) raw: sys::cudnnHandle_t,
    stream: cu::CUstream,
    ctx: cu::CUcontext,
}

impl Handle {
    /// Makes the primary context of `device` current on this thread (cubecl's context: it
    /// retains the same primary context) and creates a handle on it.
    pub(crate) fn new(device: usize) -> Result<Self> {
        let ordinal = i32::try_from(device).map_err(|_| format!("device index {device}"))?;
        // Idempotent; cubecl has normally initialised the driver already.
        drv::init().map_err(|e| format!("CUDA driver: {e}"))?;
        let dev = drv::device::get(ordinal).map_err(|e| format!("CUDA device {device}: {e}"))?;
        // SAFETY: `dev` is a valid device; the primary context is retained (reference counted,
        // never released here: cubecl holds it for the life of the process anyway) and made
        // current on this thread, where every later call of this handle happens.
        #[allow(unsafe_code)]
        let ctx = unsafe {
            let ctx = drv::primary_ctx::retain(dev).map_err(|e| format!("primary context: {e}"))?;
            drv::ctx::set_current(ctx).map_err(|e| format!("set context: {e}"))?;
            ctx
        };
        let mut raw: sys::cudnnHandle_t = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; a current context exists (above).
        #[allow(unsafe_code)]
        unsafe {
            check(sys::cudnnCreate(&mut raw), "cudnnCreate")?;
        }
        Ok(Self {
            raw,
            stream: std::ptr::null_mut(),
            ctx,
        })
    }

    /// Makes the handle's context current on this thread again (another library on this
    /// thread may have switched it since).
    pub(crate) fn make_current(&self) -> Result<()> {
        // SAFETY: `ctx` is the retained primary context from `new`, never released.
        #[allow(unsafe_code)]
        unsafe {
            drv::ctx::set_current(self.ctx).map_err(|e| format!("set context: {e}"))
        }
    }

    /// Queues the handle's later calls on `stream` (a host-side setting; nothing waits).
    ///
    /// # Safety
    /// `stream` must be a live stream of this handle's context that outlives every call made
    /// through the handle until the next `bind`.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn bind(&mut self, stream: cu::CUstream) -> Result<()> {
        if stream != self.stream {
            // SAFETY: `raw` is a live handle; the caller vouches for `stream`.
            unsafe { check(sys::cudnnSetStream(self.raw, stream as _), "cudnnSetStream")? };
            self.stream = stream;
        }
        Ok(())
    }

    /// Waits until everything queued on the bound stream (cuDNN's calls and cubecl's kernels
    /// alike) has finished.
    pub(crate) fn synchronize(&self) -> Result<()> {
        if self.stream.is_null() {
            return Ok(());
        }
        // SAFETY: the bound stream is live (`bind`'s contract).
        #[allow(unsafe_code)]
        unsafe {
            drv::stream::synchronize(self.stream).map_err(|e| format!("CUDA stream: {e}"))
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created in `new` and released once, here; errors at teardown have no one to
        // report to. The stream is cubecl's and stays.
        #[allow(unsafe_code)]
        unsafe {
            let _ = sys::cudnnDestroy(self.raw);
        }
    }
}

/// Device memory owned outside cubecl's pools (the cuDNN workspace).
pub(crate) struct DeviceBuffer {
    ptr: cu::CUdeviceptr,
    bytes: usize,
}

impl DeviceBuffer {
    /// `bytes` of device memory on the current context (none for 0).
    pub(crate) fn new(bytes: usize) -> Result<Self> {
        if bytes == 0 {
            return Ok(Self { ptr: 0, bytes });
        }
        // SAFETY: plain allocation on the current context; freed in `drop`.
        #[allow(unsafe_code)]
        let ptr = unsafe { drv::malloc_sync(bytes) }
            .map_err(|e| format!("allocating {bytes} bytes of cuDNN workspace: {e}"))?;
        Ok(Self { ptr, bytes })
    }

    /// Its address (null for an empty buffer) and size.
    pub(crate) fn raw(&self) -> (*mut c_void, usize) {
        (self.ptr as *mut c_void, self.bytes)
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.ptr != 0 {
            // SAFETY: allocated in `new`, freed once; the owner synchronises the stream it
            // queued on before replacing or dropping a workspace, so no call still uses it
            // (and cuMemFree waits for the device's pending work anyway).
            #[allow(unsafe_code)]
            unsafe {
                let _ = drv::free_sync(self.ptr);
            }
        }
    }
}
