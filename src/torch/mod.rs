//! Feature `torch`: the language-model stack on tch (libtorch): HF-compatible
//! GPT-NeoX and GPT-2, checkpoints in HF layout, the tokenizer, KV-cache
//! generation, sequence log-probs and the reward model.

pub mod checkpoint;
pub mod config;
pub mod generate;
pub mod gpt2;
pub mod gpt_neox;
pub mod jsonl;
pub mod kv_cache;
pub mod layers;
pub mod logprobs;
pub mod memory;
pub mod model;
pub mod reward;
pub mod tokenizer;

pub use model::{Head, LanguageModel};

/// Errors of the language-model stack. Every message names what it is
/// about (a file, a tensor, a field).
#[derive(Debug, thiserror::Error)]
pub enum TorchError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("tensor `{name}`: {message}")]
    Tensor { name: String, message: String },
    #[error("bad input: {0}")]
    Input(String),
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
}

pub type Result<T> = std::result::Result<T, TorchError>;

pub(crate) fn file_error(path: &std::path::Path, message: impl std::fmt::Display) -> TorchError {
    TorchError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}
