//! The kernels under the ResNet: convolution, BatchNorm (+ ReLU) and the classifier's matmul
//! as single Burn autodiff operations, with the implementation for each backend chosen by one
//! [`KernelChoice`] value that the binaries build and the model carries.
//!
//! ```text
//! choice.rs      KernelChoice: CPU conv/BN, CUDA conv/BN, precision (set at the edge)
//! conv/          the convolution: dispatch (mod.rs), geometry, autodiff op, CPU im2col+GEMM
//!                (cpu.rs, flex.rs), CUDA fixed strategies and tuning (cuda/), shared
//!                gradient formulations (dilate.rs, wgrad.rs) and the tuning plan
//! bn/            BatchNorm (+ReLU) as one autodiff node: fused on the CPU (mod.rs over cpu.rs),
//!                cuDNN's on CUDA (cuda.rs)
//! cudnn/         cuDNN for the convolutions and BatchNorm: descriptors, algorithm choice and
//!                cache (pure, CPU-tested), FFI, per-thread handles and stream ordering
//! matmul.rs      the classifier's linear op and its matmul-kernel trait
//! optim/         the optimizer update in one pass over each parameter: CPU (mod.rs), one
//!                kernel per parameter on CUDA (cuda.rs)
//! pool.rs        max pooling on the CPU (the ImageNet stem's pool): evaluation here,
//!                training's autodiff node in pool_train.rs
//! sgemm.rs       the CPU GEMM the convolutions run on; scratch.rs: its reusable buffers
//! precision.rs   f32 or bf16 (autocast semantics) convolution arithmetic
//! tap.rs         gradient taps: the nodes announce parameter gradients as the backward
//!                computes them (data-parallel overlap)
//! backends.rs    the backend types the kernels recognise
//! ```
//!
//! Each fast path is picked per backend type at run time (`TypeId`), so callers stay generic
//! over `B: Backend` and no trait bound leaks upward; every backend or shape a fast path does
//! not handle runs Burn's own operation unchanged.

// `unsafe` stays denied (workspace lints); the CPU GEMM's AVX-512 micro-kernel and the
// cuDNN/cubecl FFI allow it item by item, each block with its SAFETY comment.

pub mod backends;
pub mod bn;
mod cast;
mod choice;
pub mod conv;
pub mod cudnn;
pub mod geom;
pub mod matmul;
pub mod memory;
pub mod optim;
pub mod pool;
mod pool_train;
pub mod precision;
mod scratch;
mod sgemm;
pub mod tap;
mod wide;

pub use choice::{
    CpuBn, CpuConv, CpuOptim, CudaBn, CudaConv, CudaLayout, CudaMath, CudaOptim, KernelChoice,
    DEFAULT_CUDNN_WORKSPACE_MB,
};
pub use conv::ConvGeom;
pub use precision::ConvPrecision;
