//! Errors of the CUDA backend.

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
