//! The building blocks every model family is made of, with HF parameter
//! names: affine maps and embeddings, norms, rotary embeddings (half-split
//! and interleaved), attention with grouped-query heads and its mask, the
//! KV cache, and the MLPs.

pub mod attention;
pub mod kv_cache;
pub mod linear;
pub mod lora;
pub mod mlp;
pub mod norm;
pub mod rotary;

pub use attention::{Frame, attend, cached};
pub use kv_cache::KvCache;
pub use linear::{Conv1D, Embedding, Linear};
pub use lora::{Lora, LoraPlan, LoraSpec, LoraTargets};
pub use mlp::{Activation, GatedMlp};
pub use norm::{LayerNorm, RmsNorm};
pub use rotary::{RopeParameters, RopeScaling, Rotary, RotaryStyle, RotaryTables};
