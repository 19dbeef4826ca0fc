//! The model families p3o loads, keyed by `config.json`'s `model_type`
//! (or, where that is missing, its `architectures`), and the parsing of a
//! config into its family's struct.

use super::architecture::Architecture;
use super::family::Family;
use super::gpt_neox::GptNeoxConfig;
use super::gpt2::Gpt2Config;
use super::gptj::GptJConfig;
use super::llama::DecoderShape;
use super::{mistral, qwen2, qwen3};
use crate::torch::{Result, TorchError};

/// The family a raw `config.json` names: its `model_type`, else the first
/// of its `architectures`.
pub fn family_of(raw: &serde_json::Value) -> Result<Family> {
    let unsupported = |what: String| {
        TorchError::Unsupported(format!("{what} (supported: {})", Family::supported()))
    };
    match raw.get("model_type") {
        Some(serde_json::Value::String(t)) => {
            Family::from_model_type(t).ok_or_else(|| unsupported(format!("model_type `{t}`")))
        }
        Some(v) if !v.is_null() => Err(TorchError::Input(format!(
            "field `model_type`: expected a string, got {v}"
        ))),
        _ => match raw
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
        {
            Some(name) => Family::from_architecture(name)
                .ok_or_else(|| unsupported(format!("architecture `{name}`"))),
            None => Err(unsupported("model_type `(missing)`".into())),
        },
    }
}

/// The family's config, read from `raw` and checked.
pub fn architecture(raw: &serde_json::Value) -> Result<Architecture> {
    Ok(match family_of(raw)? {
        Family::GptNeox => Architecture::GptNeox(GptNeoxConfig::from_json(raw)?),
        Family::Gpt2 => Architecture::Gpt2(Gpt2Config::from_json(raw)?),
        Family::GptJ => Architecture::GptJ(GptJConfig::from_json(raw)?),
        Family::Llama => Architecture::Llama(DecoderShape::llama(raw)?),
        Family::Mistral => Architecture::Mistral(mistral::shape(raw)?),
        Family::Qwen2 => Architecture::Qwen2(qwen2::shape(raw)?),
        Family::Qwen3 => Architecture::Qwen3(qwen3::shape(raw)?),
    })
}
