//! Feature `torch`: the language-model stack on tch (libtorch): HF-compatible
//! GPT-NeoX and GPT-2, checkpoints in HF layout, the tokenizer, KV-cache
//! generation, sequence log-probs and the reward model.

pub mod checkpoint;
pub mod config;
pub mod error;
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

pub use error::{Result, TorchError};
pub(crate) use error::{file_error, write_error};
pub use model::{Head, LanguageModel};
