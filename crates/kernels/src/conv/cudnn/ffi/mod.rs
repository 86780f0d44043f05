//! The cuDNN calls: a handle on a stream of its own, the descriptors of a [`ConvPlan`], the
//! algorithm search (`cudnnFind*AlgorithmEx`) and the three convolution passes, on raw device
//! addresses. Everything here is `unsafe` FFI behind safe wrappers whose callers (`super::run`)
//! guarantee what the SAFETY comments state: valid, live, correctly sized device memory on the
//! current context, and no other stream touching it while cuDNN runs.
//!
//! ```text
//! mod.rs          errors, the library probe and version
//! handle.rs       the cuDNN handle and its stream; device memory for the workspace
//! descriptors.rs  tensor, filter and convolution descriptors of a ConvPlan
//! calls.rs        cudnnFind*AlgorithmEx and the three passes
//! ```

mod calls;
mod descriptors;
mod handle;

use cudarc::cudnn::sys;

pub(crate) use calls::{find, run, Operands};
pub(crate) use descriptors::Descriptors;
pub(crate) use handle::{DeviceBuffer, Handle};

/// A failed call, named.
pub(crate) type Result<T> = std::result::Result<T, String>;

fn check(status: sys::cudnnStatus_t, what: &str) -> Result<()> {
    match status {
        sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS => Ok(()),
        other => Err(format!("{what}: {other:?}")),
    }
}

/// The loaded cuDNN's version (`cudnnGetVersion()`). Call only after
/// `cudarc::cudnn::sys::is_culib_present()` said the library loads.
pub(crate) fn version() -> usize {
    // SAFETY: takes no arguments; the library was found by the caller's probe, so loading the
    // symbol succeeds.
    #[allow(unsafe_code)]
    unsafe {
        sys::cudnnGetVersion()
    }
}

/// Whether `libcudnn` can be loaded (no symbol is resolved).
pub(crate) fn library_present() -> bool {
    // SAFETY: only tries `dlopen` on the candidate names; loads nothing else.
    #[allow(unsafe_code)]
    unsafe {
        sys::is_culib_present()
    }
}
