//! Errors of training and of the toy pipeline. Each says whether the input
//! was at fault ([`TrainError::is_bad_input`]): the command line answers bad
//! input with exit status 2 and a failure at run time with 1 ([C-ERRORS]).

use crate::torch::TorchError;

/// A config that does not parse or check; the message names the key.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// A failure of `p3o train`, `p3o sft`, `p3o reward-model train`,
/// `p3o eval` or `p3o demo`.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A config key with a bad value.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Input that cannot be used: a missing or malformed file or line, a
    /// prompt that does not fit the model, a device or backend this machine
    /// or build lacks.
    #[error("{0}")]
    Input(String),
    /// The language-model stack (loading, forward, generation).
    #[error(transparent)]
    Torch(#[from] TorchError),
    /// The CUDA kernels of `kernels = cuda` (or `cuda-host`) failed.
    #[cfg(feature = "cuda")]
    #[error("CUDA kernels: {0}")]
    Kernels(#[from] crate::cuda::CudaError),
    /// The fused LM head ([C-FUSED-HEAD]) failed: a shape the trainer got
    /// wrong, or libtorch (running out of memory) under it.
    #[error(transparent)]
    Head(#[from] crate::ops::fused_head::HeadError),
    /// The run stopped on non-finite rewards, losses or gradients.
    #[error("{0}")]
    NonFinite(String),
    /// A broken invariant of the trainer itself (a bug, not the input).
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// Drawing a figure failed.
    #[error("plotting: {0}")]
    Plot(String),
    /// Reading or writing the run's own files.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl TrainError {
    /// Whether the caller's input is at fault (exit status 2) rather than
    /// the run (exit status 1).
    pub fn is_bad_input(&self) -> bool {
        match self {
            TrainError::Config(_) | TrainError::Input(_) => true,
            TrainError::Torch(e) => e.is_bad_input(),
            _ => false,
        }
    }
}
