//! The model families, one file each with its own config struct, built
//! from the shared blocks of [`crate::torch::nn`]; [`registry`] maps a
//! `config.json` to its family.

pub mod architecture;
pub mod family;
pub mod fields;
pub mod gpt2;
pub mod gpt_neox;
pub mod gptj;
pub mod llama;
pub mod mistral;
pub mod qwen2;
pub mod qwen3;
pub mod registry;

pub use architecture::{Architecture, Body, HeadSpec};
pub use family::Family;
