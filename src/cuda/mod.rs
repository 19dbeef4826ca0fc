//! Feature `cuda`: the hand-written kernels of `kernels/`, compiled by NVRTC
//! at first use and launched through cudarc. Each kernel has a float64 twin
//! in `crate::reference` and a differential test in `tests/cuda_kernels.rs`.
//!
//! Nothing here links against CUDA: NVRTC and the driver are loaded at run
//! time, so the crate builds and its compile tests run on machines without a
//! GPU.

pub mod compare;
pub mod device;
pub mod host;
pub mod launch;
pub mod nvrtc;
pub mod ops;
pub mod sequence_case;
pub mod token_case;
#[cfg(feature = "torch")]
pub mod torch_ops;

pub use device::Gpu;

/// Errors of the CUDA backend.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("NVRTC (libnvrtc.so.13) not found: {0}")]
    NvrtcNotFound(String),
    #[error("NVRTC failed on kernels/{file} for {arch}:\n{log}")]
    Compile {
        file: String,
        arch: String,
        log: String,
    },
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    #[error("CUDA driver error: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("invalid kernel input: {0}")]
    Input(String),
}
