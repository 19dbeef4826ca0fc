//! The fused head's errors.

/// Errors of the op: inputs of the wrong shape, or a failure of the
/// library under it.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("fused LM head: {0}")]
    Shape(String),
    #[cfg(feature = "torch")]
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
    #[cfg(all(feature = "cuda", feature = "torch"))]
    #[error(transparent)]
    Kernels(#[from] crate::cuda::CudaError),
}
