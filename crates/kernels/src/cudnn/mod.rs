//! cuDNN under Burn's CUDA tensors, as PyTorch runs it: the convolutions
//! (`--cuda-conv cudnn`) and training-mode BatchNorm (`--cuda-bn cudnn`), on the device memory
//! of cubecl tensors.
//!
//! ```text
//! mod.rs        whether cuDNN can be used at all, and what it has done (pure, CPU-tested)
//! conv_plan.rs  convolution descriptors, math mode, algorithm choice, workspace growth (pure)
//! cache.rs      the algorithm cache and its file in the kernel cache directory (pure)
//! bn_plan.rs    BatchNorm descriptors and what cuDNN declines (pure)
//! ffi/          handles, descriptors and the calls themselves (CUDA builds)
//! device.rs     per-thread handles, stream ordering and its counters (CUDA builds)
//! conv_run.rs   the convolution passes on cubecl tensors, the shared algorithm cache (CUDA)
//! bn_run.rs     BatchNorm forward and backward on cubecl tensors (CUDA builds)
//! ```
//!
//! cuDNN is loaded at run time (`libcudnn.so.9`, through cudarc), so building needs no CUDA
//! toolkit; a process that asks for cuDNN on a machine without it gets one warning and the
//! fallbacks (`gemm` convolutions, Burn's BatchNorm).

pub mod bn_plan;
pub mod cache;
pub mod conv_plan;

#[cfg(feature = "cuda")]
pub(crate) mod bn_run;
#[cfg(feature = "cuda")]
pub(crate) mod conv_run;
#[cfg(feature = "cuda")]
pub(crate) mod device;
#[cfg(feature = "cuda")]
mod ffi;

use std::sync::atomic::{AtomicU64, Ordering};

static SYNCS: AtomicU64 = AtomicU64::new(0);
static SYNC_NANOS: AtomicU64 = AtomicU64::new(0);
static FALLBACKS: AtomicU64 = AtomicU64::new(0);

/// What the cuDNN path has done in this process so far (all zero when it never ran).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    /// Host synchronisations made to order cuDNN against cubecl's stream (two per call).
    pub host_syncs: u64,
    /// Seconds spent waiting in them.
    pub host_sync_seconds: f64,
    /// Calls cuDNN declined or could not make, which ran on the fallback instead (gemm
    /// kernels, Burn's BatchNorm).
    pub fallbacks: u64,
}

/// The counters since the process started.
pub fn stats() -> Stats {
    Stats {
        host_syncs: SYNCS.load(Ordering::Relaxed),
        host_sync_seconds: SYNC_NANOS.load(Ordering::Relaxed) as f64 * 1e-9,
        fallbacks: FALLBACKS.load(Ordering::Relaxed),
    }
}

/// The oldest cuDNN the bindings fit: cudarc's cuDNN 9 API (`cudnnGetVersion()` encodes 9.x.y
/// as 9·10000 + x·100 + y; cuDNN 8 as 8·1000 + …).
pub const MIN_VERSION: usize = 90000;

/// Whether cuDNN can run in this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    /// Loaded; its `cudnnGetVersion()`.
    Ready(usize),
    /// Not usable, and why (the fallbacks run).
    Unavailable(String),
}

/// The decision from what the probe found: whether the library loads, and (asked only when it
/// does, since asking loads it) its version.
pub fn decide(library_present: bool, version: impl FnOnce() -> usize) -> Availability {
    if !library_present {
        return Availability::Unavailable(
            "libcudnn.so.9 was not found in LD_LIBRARY_PATH or the system library directories \
             (pip's nvidia-cudnn-cu12 puts it in site-packages/nvidia/cudnn/lib)"
                .into(),
        );
    }
    let v = version();
    if v < MIN_VERSION {
        return Availability::Unavailable(format!(
            "cuDNN {v} is loaded; these bindings need cuDNN 9 ({MIN_VERSION} or newer)"
        ));
    }
    Availability::Ready(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_or_old_cudnn_is_a_reason_never_a_panic() {
        let asked = std::cell::Cell::new(false);
        let a = decide(false, || {
            asked.set(true);
            0
        });
        assert!(matches!(a, Availability::Unavailable(ref why) if why.contains("libcudnn.so.9")));
        assert!(
            !asked.get(),
            "the version is not asked of a library that is not there"
        );
        assert_eq!(
            decide(true, || 8906),
            Availability::Unavailable(
                "cuDNN 8906 is loaded; these bindings need cuDNN 9 (90000 or newer)".into()
            )
        );
        assert_eq!(decide(true, || 91000), Availability::Ready(91000));
        assert_eq!(
            decide(true, || MIN_VERSION),
            Availability::Ready(MIN_VERSION)
        );
    }
}
