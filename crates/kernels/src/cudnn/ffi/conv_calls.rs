//! The algorithm search and the three convolution passes.

use std::ffi::c_void;

use cudarc::cudnn::sys;

use super::{check, Descriptors, Handle, Result};
use crate::cudnn::conv_plan::Measured;
use crate::geom::Pass;

/// The three performance structs of cuDNN share one layout; reading it through plain integers
/// means a value cuDNN adds in a later version can never be an invalid Rust enum.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawPerf {
    algo: u32,
    status: u32,
    time: f32,
    memory: usize,
    determinism: u32,
    math_type: u32,
    reserved: [i32; 3],
}

const _: () = {
    assert!(
        std::mem::size_of::<RawPerf>() == std::mem::size_of::<sys::cudnnConvolutionFwdAlgoPerf_t>()
    );
    assert!(
        std::mem::size_of::<RawPerf>()
            == std::mem::size_of::<sys::cudnnConvolutionBwdDataAlgoPerf_t>()
    );
    assert!(
        std::mem::size_of::<RawPerf>()
            == std::mem::size_of::<sys::cudnnConvolutionBwdFilterAlgoPerf_t>()
    );
};

const ZERO_PERF: RawPerf = RawPerf {
    algo: 0,
    status: u32::MAX,
    time: f32::NAN,
    memory: 0,
    determinism: 0,
    math_type: 0,
    reserved: [0; 3],
};

fn measured(raw: &[RawPerf]) -> Vec<Measured> {
    raw.iter()
        .map(|p| Measured {
            algo: p.algo as i32,
            ok: p.status == 0,
            time_ms: p.time,
            memory: p.memory,
            deterministic: p.determinism == 1,
            math_tensor_op: p.math_type == 1,
        })
        .collect()
}

/// The operands of one pass: (first input, second input, output), as cuDNN names them per pass:
/// forward (x, w, y), input gradient (w, dy, dx), weight gradient (x, dy, dw).
pub(crate) type Operands = (*const c_void, *const c_void, *mut c_void);

/// Measures every algorithm of `pass` on the given operands with up to `workspace` bytes.
///
/// # Safety
/// The operand addresses are live device allocations of the sizes the descriptors describe,
/// on the handle's context; they stay allocated, and nothing writes them, except in stream order behind this call on the handle's stream;
/// `workspace` is a live allocation of its stated size (or null with size 0).
#[allow(unsafe_code)]
pub(crate) unsafe fn find(
    h: &Handle,
    d: &Descriptors,
    pass: Pass,
    (a, b, out): Operands,
    (ws, ws_bytes): (*mut c_void, usize),
) -> Result<Vec<Measured>> {
    const N: usize = 8;
    let mut perf = [ZERO_PERF; N];
    let mut returned = 0i32;
    let p = perf.as_mut_ptr();
    // SAFETY: see the function's contract; `perf` holds N structs of the layout cuDNN writes
    // (size checked at compile time) and `returned` is a valid out-pointer.
    let status = unsafe {
        match pass {
            Pass::Forward => sys::cudnnFindConvolutionForwardAlgorithmEx(
                h.raw,
                d.x,
                a,
                d.w,
                b,
                d.conv,
                d.y,
                out,
                N as i32,
                &mut returned,
                p.cast(),
                ws,
                ws_bytes,
            ),
            Pass::InputGrad => sys::cudnnFindConvolutionBackwardDataAlgorithmEx(
                h.raw,
                d.w,
                a,
                d.y,
                b,
                d.conv,
                d.x,
                out,
                N as i32,
                &mut returned,
                p.cast(),
                ws,
                ws_bytes,
            ),
            Pass::WeightGrad => sys::cudnnFindConvolutionBackwardFilterAlgorithmEx(
                h.raw,
                d.x,
                a,
                d.y,
                b,
                d.conv,
                d.w,
                out,
                N as i32,
                &mut returned,
                p.cast(),
                ws,
                ws_bytes,
            ),
        }
    };
    check(status, &format!("cudnnFind ({})", pass.name()))?;
    let n = usize::try_from(returned).unwrap_or(0).min(N);
    Ok(measured(&perf[..n]))
}

fn fwd_algo(a: i32) -> Option<sys::cudnnConvolutionFwdAlgo_t> {
    use sys::cudnnConvolutionFwdAlgo_t::*;
    [
        CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
        CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
        CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
        CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
        CUDNN_CONVOLUTION_FWD_ALGO_FFT,
        CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
        CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
        CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
    ]
    .into_iter()
    .find(|v| *v as i32 == a)
}

fn bwd_data_algo(a: i32) -> Option<sys::cudnnConvolutionBwdDataAlgo_t> {
    use sys::cudnnConvolutionBwdDataAlgo_t::*;
    [
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
    ]
    .into_iter()
    .find(|v| *v as i32 == a)
}

fn bwd_filter_algo(a: i32) -> Option<sys::cudnnConvolutionBwdFilterAlgo_t> {
    use sys::cudnnConvolutionBwdFilterAlgo_t::*;
    [
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
    ]
    .into_iter()
    .find(|v| *v as i32 == a)
}

/// Queues `pass` with algorithm `algo` on the handle's stream (`out = op(a, b)`, overwritten).
///
/// # Safety
/// As for [`find`]; in addition `workspace` holds at least what `algo` needs for this pass.
#[allow(unsafe_code)]
pub(crate) unsafe fn run(
    h: &Handle,
    d: &Descriptors,
    pass: Pass,
    algo: i32,
    (a, b, out): Operands,
    (ws, ws_bytes): (*mut c_void, usize),
) -> Result<()> {
    // Scaling factors are f32 for f32 and bf16 data alike (cuDNN's rule for non-double types).
    let (one, zero) = (1.0f32, 0.0f32);
    let (one, zero) = (
        (&one as *const f32).cast::<c_void>(),
        (&zero as *const f32).cast::<c_void>(),
    );
    let unknown = || {
        format!(
            "{} algorithm {algo} is not one cuDNN 9 defines",
            pass.name()
        )
    };
    // SAFETY: see the function's contract; `one` and `zero` outlive the (asynchronous) call
    // because cuDNN reads host scaling factors before returning.
    let status = unsafe {
        match pass {
            Pass::Forward => sys::cudnnConvolutionForward(
                h.raw,
                one,
                d.x,
                a,
                d.w,
                b,
                d.conv,
                fwd_algo(algo).ok_or_else(unknown)?,
                ws,
                ws_bytes,
                zero,
                d.y,
                out,
            ),
            Pass::InputGrad => sys::cudnnConvolutionBackwardData(
                h.raw,
                one,
                d.w,
                a,
                d.y,
                b,
                d.conv,
                bwd_data_algo(algo).ok_or_else(unknown)?,
                ws,
                ws_bytes,
                zero,
                d.x,
                out,
            ),
            Pass::WeightGrad => sys::cudnnConvolutionBackwardFilter(
                h.raw,
                one,
                d.x,
                a,
                d.y,
                b,
                d.conv,
                bwd_filter_algo(algo).ok_or_else(unknown)?,
                ws,
                ws_bytes,
                zero,
                d.w,
                out,
            ),
        }
    };
    check(status, &format!("cuDNN {}", pass.name()))
}
