//! The cuDNN calls: a handle bound to cubecl's stream, the descriptors of a `ConvPlan`, the
//! algorithm search (`cudnnFind*AlgorithmEx`), the three convolution passes and BatchNorm, on
//! raw device addresses. Everything here is `unsafe` FFI behind safe wrappers whose callers
//! (`super::conv_run`, `super::bn_run`) guarantee what the SAFETY comments state: valid, live, correctly sized device memory on the
//! current context, touched by nothing out of order with the stream the handle is bound to.
//!
//! ```text
//! mod.rs               errors, the library probe and version
//! handle.rs            the cuDNN handle and the stream it is bound to; workspace memory
//! conv_descriptors.rs  tensor, filter and convolution descriptors of a ConvPlan
//! conv_calls.rs        cudnnFind*AlgorithmEx and the three convolution passes
//! bn.rs                BatchNorm descriptors, training forward and backward
//! ```

mod bn;
mod conv_calls;
mod conv_descriptors;
mod handle;

use cudarc::cudnn::sys;

pub(crate) use bn::{
    backward as bn_backward, forward_training as bn_forward, BnBackward, BnDescriptors, BnForward,
};
pub(crate) use conv_calls::{find, run, Operands};
pub(crate) use conv_descriptors::Descriptors;
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
