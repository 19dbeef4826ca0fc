//! A family's checked hyper-parameters ([`Architecture`]) and its
//! transformer body ([`Body`]), dispatched to the family's file.

use tch::nn::Path;
use tch::{TchError, Tensor};

use super::family::Family;
use super::gpt_neox::{GptNeoxConfig, GptNeoxModel};
use super::gpt2::{Gpt2Config, Gpt2Model};
use super::gptj::{GptJConfig, GptJModel};
use super::llama::{DecoderShape, LlamaModel};
use crate::torch::Result;
use crate::torch::nn::{Frame, KvCache, LoraPlan};

/// A family and its checked hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum Architecture {
    GptNeox(GptNeoxConfig),
    Gpt2(Gpt2Config),
    GptJ(GptJConfig),
    Llama(DecoderShape),
    Mistral(DecoderShape),
    Qwen2(DecoderShape),
    Qwen3(DecoderShape),
}

/// Where a causal LM's head comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadSpec {
    /// The parameter path of an untied head (`embed_out`, `lm_head`).
    pub name: &'static str,
    /// The head is the token embedding (`tie_word_embeddings`).
    pub tied: bool,
    /// The head has a bias (GPT-J's `lm_head.bias`).
    pub bias: bool,
}

impl Architecture {
    pub fn family(&self) -> Family {
        match self {
            Architecture::GptNeox(_) => Family::GptNeox,
            Architecture::Gpt2(_) => Family::Gpt2,
            Architecture::GptJ(_) => Family::GptJ,
            Architecture::Llama(_) => Family::Llama,
            Architecture::Mistral(_) => Family::Mistral,
            Architecture::Qwen2(_) => Family::Qwen2,
            Architecture::Qwen3(_) => Family::Qwen3,
        }
    }

    fn decoder(&self) -> Option<&DecoderShape> {
        match self {
            Architecture::Llama(s)
            | Architecture::Mistral(s)
            | Architecture::Qwen2(s)
            | Architecture::Qwen3(s) => Some(s),
            _ => None,
        }
    }

    pub fn vocab_size(&self) -> i64 {
        match self {
            Architecture::GptNeox(c) => c.vocab_size,
            Architecture::Gpt2(c) => c.vocab_size,
            Architecture::GptJ(c) => c.vocab_size,
            other => other.decoder().map_or(0, |s| s.vocab_size),
        }
    }

    pub fn hidden_size(&self) -> i64 {
        match self {
            Architecture::GptNeox(c) => c.hidden_size,
            Architecture::Gpt2(c) => c.n_embd,
            Architecture::GptJ(c) => c.n_embd,
            other => other.decoder().map_or(0, |s| s.hidden_size),
        }
    }

    /// The longest sequence the position encoding supports.
    pub fn max_positions(&self) -> i64 {
        match self {
            Architecture::GptNeox(c) => c.max_position_embeddings,
            Architecture::Gpt2(c) => c.n_positions,
            Architecture::GptJ(c) => c.n_positions,
            other => other.decoder().map_or(0, |s| s.max_position_embeddings),
        }
    }

    pub fn num_layers(&self) -> i64 {
        match self {
            Architecture::GptNeox(c) => c.num_hidden_layers,
            Architecture::Gpt2(c) => c.n_layer,
            Architecture::GptJ(c) => c.n_layer,
            other => other.decoder().map_or(0, |s| s.num_hidden_layers),
        }
    }

    /// The number of weights of the body and its LM head (an upper bound:
    /// a tied head is counted once more), in 128 bits so that no config
    /// can overflow it.
    pub fn parameter_count(&self) -> u128 {
        match self {
            Architecture::GptNeox(c) => c.parameter_count(),
            Architecture::Gpt2(c) => c.parameter_count(),
            Architecture::GptJ(c) => c.parameter_count(),
            other => other.decoder().map_or(0, DecoderShape::parameter_count),
        }
    }

    /// Whether the layers' projections store `[in, out]` weights (GPT-2's
    /// `Conv1D`; PEFT's `fan_in_fan_out`).
    pub fn fan_in_fan_out(&self) -> bool {
        matches!(self, Architecture::Gpt2(_))
    }

    pub fn lm_head(&self) -> HeadSpec {
        match self {
            Architecture::GptNeox(c) => HeadSpec {
                name: "embed_out",
                tied: c.tie_word_embeddings,
                bias: false,
            },
            Architecture::Gpt2(_) => HeadSpec {
                name: "lm_head",
                tied: true,
                bias: false,
            },
            Architecture::GptJ(c) => HeadSpec {
                name: "lm_head",
                tied: c.tie_word_embeddings,
                bias: true,
            },
            other => HeadSpec {
                name: "lm_head",
                tied: other.decoder().is_some_and(|s| s.tie_word_embeddings),
                bias: false,
            },
        }
    }
}

/// The transformer body of a family, without its head.
pub enum Body {
    GptNeox(GptNeoxModel),
    Gpt2(Gpt2Model),
    GptJ(GptJModel),
    Decoder(LlamaModel),
}

impl Body {
    /// Zero weights under the family's HF names below `root`, to be loaded,
    /// with the adapters `plan` gives the layers' projections.
    pub fn new(
        root: Path,
        arch: &Architecture,
        plan: &LoraPlan,
    ) -> std::result::Result<Body, TchError> {
        Ok(match arch {
            Architecture::GptNeox(c) => Body::GptNeox(GptNeoxModel::new(root, c, plan)?),
            Architecture::Gpt2(c) => Body::Gpt2(Gpt2Model::new(root, c, plan)?),
            Architecture::GptJ(c) => Body::GptJ(GptJModel::new(root, c, plan)?),
            Architecture::Llama(s)
            | Architecture::Mistral(s)
            | Architecture::Qwen2(s)
            | Architecture::Qwen3(s) => Body::Decoder(LlamaModel::new(root, s, plan)?),
        })
    }

    pub fn num_layers(&self) -> usize {
        match self {
            Body::GptNeox(m) => m.layers.len(),
            Body::Gpt2(m) => m.h.len(),
            Body::GptJ(m) => m.h.len(),
            Body::Decoder(m) => m.layers.len(),
        }
    }

    /// The token embedding `[V, H]` (a tied head's weight).
    pub fn token_embedding(&self) -> &Tensor {
        match self {
            Body::GptNeox(m) => &m.embed_in.weight,
            Body::Gpt2(m) => &m.wte.weight,
            Body::GptJ(m) => &m.wte.weight,
            Body::Decoder(m) => &m.embed_tokens.weight,
        }
    }

    /// Final hidden states `[b, t, h]`; see [`crate::torch::LanguageModel::hidden`]:
    /// the embeddings, every layer in turn, the final norm.
    pub fn forward(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_valid: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (mut x, frame) = self.embed(ids, positions, key_valid)?;
        for i in 0..self.num_layers() {
            x = self.layer(i, &x, &frame, cache.as_deref_mut().map(|c| (c, i)))?;
        }
        self.finish(&x)
    }

    /// The embeddings of a pass and its attention frame.
    pub fn embed(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_valid: &Tensor,
    ) -> Result<(Tensor, Frame)> {
        match self {
            Body::GptNeox(m) => m.embed(ids, positions, key_valid),
            Body::Gpt2(m) => m.embed(ids, positions, key_valid),
            Body::GptJ(m) => m.embed(ids, positions, key_valid),
            Body::Decoder(m) => m.embed(ids, positions, key_valid),
        }
    }

    /// Layer `i` (below [`Body::num_layers`]) on `x`, with its cache entry.
    pub fn layer(
        &self,
        i: usize,
        x: &Tensor,
        frame: &Frame,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        match self {
            Body::GptNeox(m) => m.layer(i, x, frame, cache),
            Body::Gpt2(m) => m.layer(i, x, frame, cache),
            Body::GptJ(m) => m.layer(i, x, frame, cache),
            Body::Decoder(m) => m.layer(i, x, frame, cache),
        }
    }

    /// The final norm after the last layer.
    pub fn finish(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Body::GptNeox(m) => m.finish(x),
            Body::Gpt2(m) => m.finish(x),
            Body::GptJ(m) => m.finish(x),
            Body::Decoder(m) => m.finish(x),
        }
    }
}
