//! Errors of the language-model stack: each names what it is about (a file,
//! a tensor, a field) and says whether the input was at fault.

/// Errors of the language-model stack. Every message names what it is
/// about (a file, a tensor, a field).
#[derive(Debug, thiserror::Error)]
pub enum TorchError {
    /// A file that cannot be read or is malformed.
    #[error("{path}: {message}")]
    File { path: String, message: String },
    /// A file of ours that cannot be written (a full disk, a read-only
    /// directory): a failure at run time.
    #[error("{path}: {message}")]
    Write { path: String, message: String },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("tensor `{name}`: {message}")]
    Tensor { name: String, message: String },
    #[error("{0}")]
    Input(String),
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
}

impl TorchError {
    /// Whether the caller's input is at fault (a file, a config, a tensor,
    /// a field); libtorch's own failures, such as running out of memory,
    /// are not.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, TorchError::Tch(_) | TorchError::Write { .. })
    }
}

pub type Result<T> = std::result::Result<T, TorchError>;

pub(crate) fn file_error(path: &std::path::Path, message: impl std::fmt::Display) -> TorchError {
    TorchError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

pub(crate) fn write_error(path: &std::path::Path, message: impl std::fmt::Display) -> TorchError {
    TorchError::Write {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}
