//! Feature `cuda`: the hand-written kernels of `kernels/`, compiled by NVRTC
//! at first use and launched through cudarc. Each kernel has a float64 twin
//! in `crate::reference` and a differential test in `tests/cuda_kernels.rs`.
//!
//! Nothing here links against CUDA: NVRTC and the driver are loaded at run
//! time, so the crate builds and its compile tests run on machines without a
//! GPU.

#[cfg(feature = "testing")]
pub mod compare;
pub mod device;
pub mod error;
pub mod host;
pub mod launch;
pub mod nvrtc;
pub mod ops;
#[cfg(feature = "testing")]
pub mod sequence_case;
#[cfg(feature = "testing")]
pub mod token_case;
#[cfg(feature = "torch")]
pub mod torch_ops;

pub use device::Gpu;
pub use error::CudaError;
