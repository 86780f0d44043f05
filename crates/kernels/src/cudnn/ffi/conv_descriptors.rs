//! The descriptors of one convolution, from its pure [`ConvPlan`].

use cudarc::cudnn::sys;

use super::{check, Result};
use crate::cudnn::conv_plan::{ConvPlan, Dtype, Layout, MathType};

/// The descriptors of one convolution (its input, filter, output and the convolution itself).
pub(crate) struct Descriptors {
    pub(super) x: sys::cudnnTensorDescriptor_t,
    pub(super) w: sys::cudnnFilterDescriptor_t,
    pub(super) y: sys::cudnnTensorDescriptor_t,
    pub(super) conv: sys::cudnnConvolutionDescriptor_t,
}

fn data_type(d: Dtype) -> sys::cudnnDataType_t {
    match d {
        Dtype::F32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        Dtype::Bf16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
    }
}

impl Descriptors {
    /// The descriptors of `p` for operands of `dtype` in `layout`.
    pub(crate) fn new(p: &ConvPlan, dtype: Dtype, layout: Layout) -> Result<Self> {
        let mut d = Self {
            x: std::ptr::null_mut(),
            w: std::ptr::null_mut(),
            y: std::ptr::null_mut(),
            conv: std::ptr::null_mut(),
        };
        let dt = data_type(dtype);
        let format = match layout {
            Layout::Nchw => sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
            Layout::Nhwc => sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
        };
        let math = match p.math {
            MathType::TensorOp => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
            MathType::Fma => sys::cudnnMathType_t::CUDNN_FMA_MATH,
        };
        // SAFETY: every out-pointer is a field of `d`; each descriptor is created before it is
        // set, and `d`'s drop destroys whatever was created if a later call fails. The arrays
        // passed by pointer live on this stack frame for the duration of the call and hold
        // exactly the `nbDims`/`arrayLength` elements announced.
        #[allow(unsafe_code)]
        unsafe {
            check(
                sys::cudnnCreateTensorDescriptor(&mut d.x),
                "create x descriptor",
            )?;
            check(
                sys::cudnnCreateFilterDescriptor(&mut d.w),
                "create w descriptor",
            )?;
            check(
                sys::cudnnCreateTensorDescriptor(&mut d.y),
                "create y descriptor",
            )?;
            check(
                sys::cudnnCreateConvolutionDescriptor(&mut d.conv),
                "create conv descriptor",
            )?;
            check(
                sys::cudnnSetTensorNdDescriptor(
                    d.x,
                    dt,
                    4,
                    p.x.dims.as_ptr(),
                    p.x.strides.as_ptr(),
                ),
                "x descriptor",
            )?;
            check(
                sys::cudnnSetFilterNdDescriptor(d.w, dt, format, 4, p.w.dims.as_ptr()),
                "w descriptor",
            )?;
            check(
                sys::cudnnSetTensorNdDescriptor(
                    d.y,
                    dt,
                    4,
                    p.y.dims.as_ptr(),
                    p.y.strides.as_ptr(),
                ),
                "y descriptor",
            )?;
            check(
                sys::cudnnSetConvolutionNdDescriptor(
                    d.conv,
                    2,
                    p.pad.as_ptr(),
                    p.stride.as_ptr(),
                    p.dilation.as_ptr(),
                    sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                    // f32 accumulation for f32 and bf16 operands alike.
                    sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                ),
                "convolution descriptor",
            )?;
            check(sys::cudnnSetConvolutionMathType(d.conv, math), "math type")?;
        }
        Ok(d)
    }
}

impl Drop for Descriptors {
    fn drop(&mut self) {
        // SAFETY: each pointer is null or a descriptor created in `new`, destroyed once here.
        #[allow(unsafe_code)]
        unsafe {
            if !self.x.is_null() {
                let _ = sys::cudnnDestroyTensorDescriptor(self.x);
            }
            if !self.w.is_null() {
                let _ = sys::cudnnDestroyFilterDescriptor(self.w);
            }
            if !self.y.is_null() {
                let _ = sys::cudnnDestroyTensorDescriptor(self.y);
            }
            if !self.conv.is_null() {
                let _ = sys::cudnnDestroyConvolutionDescriptor(self.conv);
            }
        }
    }
}
