//! A cuDNN handle on a stream of its own, and device memory outside cubecl's pools.

use std::ffi::c_void;

use cudarc::cudnn::sys;
use cudarc::driver::result as drv;
use cudarc::driver::sys as cu;

use super::{check, Result};

/// A cuDNN handle bound to a non-blocking stream of its own on the current context.
pub(crate) struct Handle {
    pub(super) raw: sys::cudnnHandle_t,
    stream: cu::CUstream,
    ctx: cu::CUcontext,
}

impl Handle {
    /// Makes the primary context of `device` current on this thread (cubecl's context: it
    /// retains the same primary context) and creates a handle and a stream on it.
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
        let stream = drv::stream::create(drv::stream::StreamKind::NonBlocking)
            .map_err(|e| format!("creating the cuDNN stream: {e}"))?;
        let mut raw: sys::cudnnHandle_t = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; a current context exists (above).
        #[allow(unsafe_code)]
        unsafe {
            check(sys::cudnnCreate(&mut raw), "cudnnCreate")?;
            check(sys::cudnnSetStream(raw, stream as _), "cudnnSetStream")?;
        }
        Ok(Self { raw, stream, ctx })
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

    /// Waits until everything queued on the handle's stream has finished.
    pub(crate) fn synchronize(&self) -> Result<()> {
        // SAFETY: the stream was created in `new` and is destroyed only in `drop`.
        #[allow(unsafe_code)]
        unsafe {
            drv::stream::synchronize(self.stream).map_err(|e| format!("cuDNN stream: {e}"))
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: both were created in `new` and are released once, here; errors at teardown
        // have no one to report to.
        #[allow(unsafe_code)]
        unsafe {
            let _ = sys::cudnnDestroy(self.raw);
            let _ = drv::stream::destroy(self.stream);
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
            // SAFETY: allocated in `new`, freed once; the owner synchronises the cuDNN stream
            // before replacing or dropping a workspace, so no call still uses it.
            #[allow(unsafe_code)]
            unsafe {
                let _ = drv::free_sync(self.ptr);
            }
        }
    }
}
