//! The backend types the kernels recognise. Only these get the fast paths; any other backend
//! runs Burn's own operations.

/// The CPU backend for training (flex + autodiff).
pub type FlexTrain = burn::backend::Autodiff<burn::backend::Flex>;

/// Burn's CUDA backend without the fusion layer: its tensors are cubecl tensors, so the
/// convolution kernels can be called with an explicit strategy.
#[cfg(feature = "cuda")]
pub type CudaPlain = burn_cubecl::CubeBackend<burn_cubecl::cubecl::cuda::CudaRuntime, f32, i32, u8>;
