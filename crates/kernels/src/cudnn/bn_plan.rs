//! The pure half of cuDNN's BatchNorm: the descriptors of an `[n, c, h, w]` activation and of
//! its per-channel parameters, and whether cuDNN takes the call at all. No cuDNN call here, so
//! every rule is a CPU test; `super::ffi` turns these values into descriptors and calls.
//!
//! Mode: `CUDNN_BATCHNORM_SPATIAL` (statistics over N, H and W per channel), which is what
//! PyTorch runs for NCHW activations; the persistent variant is PyTorch's choice only for
//! channels-last, and may overflow on some inputs.

use super::conv_plan::{Layout, TensorDesc};

/// Everything cuDNN needs to know about one BatchNorm call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnPlan {
    /// The activation (`x`, `y`, `dy` and `dx` share it), NCHW, dense.
    pub x: TensorDesc,
    /// The per-channel tensors (gamma, beta, saved mean and inverse deviation), `[1, c, 1, 1]`.
    pub param: TensorDesc,
    /// Values per channel (`n * h * w`), which the statistics average over.
    pub count: usize,
}

/// Why a BatchNorm cannot go to cuDNN (it then runs on Burn's operations).
#[derive(Clone, Debug, PartialEq)]
pub enum BnPlanError {
    /// A dimension does not fit cuDNN's 32-bit `int`.
    TooLarge {
        /// The value that does not fit.
        value: usize,
    },
    /// Nothing to normalise (a zero dimension).
    Empty([usize; 4]),
    /// cuDNN requires a positive, finite epsilon.
    Epsilon(f64),
}

impl std::fmt::Display for BnPlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge { value } => {
                write!(
                    f,
                    "BatchNorm input: {value} does not fit cuDNN's 32-bit sizes"
                )
            }
            Self::Empty(d) => write!(f, "BatchNorm input {d:?} has no elements"),
            Self::Epsilon(e) => write!(f, "BatchNorm epsilon {e} (cuDNN needs a positive one)"),
        }
    }
}

fn desc(dims: [usize; 4]) -> Result<TensorDesc, BnPlanError> {
    let int = |v: usize| i32::try_from(v).map_err(|_| BnPlanError::TooLarge { value: v });
    let strides = Layout::Nchw.strides(dims);
    int(dims.iter().product())?;
    Ok(TensorDesc {
        dims: [int(dims[0])?, int(dims[1])?, int(dims[2])?, int(dims[3])?],
        strides: [
            int(strides[0])?,
            int(strides[1])?,
            int(strides[2])?,
            int(strides[3])?,
        ],
    })
}

/// The descriptors of a training-mode BatchNorm over `dims = [n, c, h, w]` with `eps`, or why
/// cuDNN cannot take it.
pub fn plan(dims: [usize; 4], eps: f64) -> Result<BnPlan, BnPlanError> {
    if dims.contains(&0) {
        return Err(BnPlanError::Empty(dims));
    }
    if !(eps.is_finite() && eps > 0.0) {
        return Err(BnPlanError::Epsilon(eps));
    }
    let [n, c, h, w] = dims;
    Ok(BnPlan {
        x: desc(dims)?,
        param: desc([1, c, 1, 1])?,
        count: n * h * w,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_and_parameter_descriptors() {
        let p = plan([8, 64, 32, 32], 1e-5).expect("fits");
        assert_eq!(p.x.dims, [8, 64, 32, 32]);
        assert_eq!(p.x.strides, [64 * 1024, 1024, 32, 1]);
        assert_eq!(p.param.dims, [1, 64, 1, 1]);
        assert_eq!(p.param.strides, [64, 1, 1, 1]);
        assert_eq!(p.count, 8 * 32 * 32);
        // A 1x1 map (the ImageNet stem's last stage at small inputs) is still per channel.
        let p = plan([37, 512, 1, 1], 1e-5).expect("fits");
        assert_eq!(p.x.strides, [512, 1, 1, 1]);
        assert_eq!(p.count, 37);
    }

    #[test]
    fn what_cudnn_cannot_take_is_a_reason() {
        assert_eq!(
            plan([0, 64, 8, 8], 1e-5),
            Err(BnPlanError::Empty([0, 64, 8, 8]))
        );
        assert_eq!(plan([2, 4, 8, 8], 0.0), Err(BnPlanError::Epsilon(0.0)));
        assert!(plan([2, 4, 8, 8], f64::NAN).is_err());
        let huge = plan([1 << 16, 1 << 10, 64, 64], 1e-5).expect_err("over 2^31 elements");
        assert!(matches!(huge, BnPlanError::TooLarge { .. }));
        assert!(huge.to_string().contains("32-bit"), "{huge}");
    }
}
