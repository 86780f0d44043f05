//! cuDNN's BatchNorm: the descriptors of a [`BnPlan`] and the training-mode forward and
//! backward calls (`cudnnBatchNormalizationForwardTraining` / `Backward`, spatial mode, f32).

use std::ffi::c_void;

use cudarc::cudnn::sys;

use super::{check, Handle, Result};
use crate::cudnn::bn_plan::BnPlan;
use crate::cudnn::conv_plan::TensorDesc;

const MODE: sys::cudnnBatchNormMode_t = sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL;

/// The descriptors of one BatchNorm shape: the activation and the per-channel parameters.
pub(crate) struct BnDescriptors {
    x: sys::cudnnTensorDescriptor_t,
    param: sys::cudnnTensorDescriptor_t,
}

/// # Safety
/// `d` is a created tensor descriptor.
#[allow(unsafe_code)]
unsafe fn set(d: sys::cudnnTensorDescriptor_t, t: &TensorDesc, what: &str) -> Result<()> {
    // SAFETY: per the caller, `d` is a created descriptor; the arrays live on the caller's
    // frame and hold the 4 elements announced.
    unsafe {
        check(
            sys::cudnnSetTensorNdDescriptor(
                d,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                4,
                t.dims.as_ptr(),
                t.strides.as_ptr(),
            ),
            what,
        )
    }
}

impl BnDescriptors {
    /// The descriptors of `p` (f32 activations and parameters).
    pub(crate) fn new(p: &BnPlan) -> Result<Self> {
        let mut d = Self {
            x: std::ptr::null_mut(),
            param: std::ptr::null_mut(),
        };
        // SAFETY: the out-pointers are fields of `d`, each descriptor is created before it is
        // set, and `d`'s drop destroys whatever was created if a later call fails.
        #[allow(unsafe_code)]
        unsafe {
            check(
                sys::cudnnCreateTensorDescriptor(&mut d.x),
                "create BatchNorm x descriptor",
            )?;
            check(
                sys::cudnnCreateTensorDescriptor(&mut d.param),
                "create BatchNorm parameter descriptor",
            )?;
            set(d.x, &p.x, "BatchNorm x descriptor")?;
            set(d.param, &p.param, "BatchNorm parameter descriptor")?;
        }
        Ok(d)
    }
}

impl Drop for BnDescriptors {
    fn drop(&mut self) {
        // SAFETY: each pointer is null or a descriptor created in `new`, destroyed once here.
        #[allow(unsafe_code)]
        unsafe {
            if !self.x.is_null() {
                let _ = sys::cudnnDestroyTensorDescriptor(self.x);
            }
            if !self.param.is_null() {
                let _ = sys::cudnnDestroyTensorDescriptor(self.param);
            }
        }
    }
}

/// Device addresses of a training-mode forward: reads `x`, `gamma`, `beta`; writes `y` and the
/// batch's mean and inverse standard deviation (`1 / sqrt(biased var + eps)`).
pub(crate) struct BnForward {
    pub x: *const c_void,
    pub gamma: *const c_void,
    pub beta: *const c_void,
    pub y: *mut c_void,
    pub mean: *mut c_void,
    pub invstd: *mut c_void,
}

/// Device addresses of the backward: reads `x`, `dy`, `gamma` and the forward's saved
/// statistics; writes `dx`, `dgamma`, `dbeta`.
pub(crate) struct BnBackward {
    pub x: *const c_void,
    pub dy: *const c_void,
    pub gamma: *const c_void,
    pub mean: *const c_void,
    pub invstd: *const c_void,
    pub dx: *mut c_void,
    pub dgamma: *mut c_void,
    pub dbeta: *mut c_void,
}

/// Queues the training-mode forward on the handle's stream. The running statistics are the
/// model's (updated from the returned batch statistics), so cuDNN's are not asked for.
///
/// # Safety
/// Every address is a live device allocation on the handle's context, f32, of the size `d`
/// describes (activations: `d`'s x; the rest: its parameter descriptor); they stay allocated, and
/// nothing writes them, except in stream order behind this call on the handle's stream.
#[allow(unsafe_code)]
pub(crate) unsafe fn forward_training(
    h: &Handle,
    d: &BnDescriptors,
    a: &BnForward,
    eps: f64,
) -> Result<()> {
    let (one, zero) = (1.0f32, 0.0f32);
    // SAFETY: per the caller for the device addresses; `one`/`zero` are host scalars of the
    // activation type (f32), alive for the call; null running statistics are allowed when
    // both are null.
    unsafe {
        check(
            sys::cudnnBatchNormalizationForwardTraining(
                h.raw,
                MODE,
                (&one as *const f32).cast(),
                (&zero as *const f32).cast(),
                d.x,
                a.x,
                d.x,
                a.y,
                d.param,
                a.gamma,
                a.beta,
                0.0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                eps,
                a.mean,
                a.invstd,
            ),
            "cudnnBatchNormalizationForwardTraining",
        )
    }
}

/// Queues the backward on the handle's stream (gradients overwrite, not accumulate).
///
/// # Safety
/// As for [`forward_training`], and `mean`/`invstd` are what the forward on the same `x` and
/// `eps` saved.
#[allow(unsafe_code)]
pub(crate) unsafe fn backward(
    h: &Handle,
    d: &BnDescriptors,
    a: &BnBackward,
    eps: f64,
) -> Result<()> {
    let (one, zero) = (1.0f32, 0.0f32);
    let (one, zero) = ((&one as *const f32).cast(), (&zero as *const f32).cast());
    // SAFETY: as in `forward_training`.
    unsafe {
        check(
            sys::cudnnBatchNormalizationBackward(
                h.raw, MODE, one, zero, one, zero, d.x, a.x, d.x, a.dy, d.x, a.dx, d.param,
                a.gamma, a.dgamma, a.dbeta, eps, a.mean, a.invstd,
            ),
            "cudnnBatchNormalizationBackward",
        )
    }
}
