//! Feature `torch`: the language-model stack on tch (libtorch): the shared
//! blocks ([`nn`]), the HF model families ([`models`]: GPT-NeoX, GPT-2,
//! GPT-J, Llama, Mistral, Qwen2, Qwen3), checkpoints in HF layout, the
//! tokenizer, KV-cache generation, sequence log-probs and the reward model.

pub mod activation_checkpoint;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod generate;
pub mod jsonl;
pub mod logprobs;
pub mod memory;
pub mod model;
pub mod models;
pub mod nn;
pub mod peft;
pub mod reward;
pub mod tokenizer;

pub use error::{Result, TorchError};
pub(crate) use error::{file_error, write_error};
pub use model::{Head, LanguageModel};
