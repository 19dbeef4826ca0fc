//! Mistral (`MistralForCausalLM`, `MistralForSequenceClassification`): the
//! Llama decoder without biases, plus `sliding_window`, which limits every
//! query to its last `sliding_window` keys, itself included, in the mask
//! and in the cached keys a decoding step reads.

use serde::Deserialize;

use super::fields::{check_dimensions, parse};
use super::llama::{DecoderShape, Defaults};
use crate::torch::Result;

#[derive(Deserialize)]
struct MistralSwitches {
    #[serde(default)]
    sliding_window: Option<i64>,
}

pub fn shape(raw: &serde_json::Value) -> Result<DecoderShape> {
    let mut shape = DecoderShape::common(
        raw,
        "mistral",
        Defaults {
            rms_norm_eps: 1e-6,
            max_position_embeddings: 4096 * 32,
            head_dim: None,
            tie_word_embeddings: false,
            rope_theta: 10000.0,
        },
    )?;
    let s: MistralSwitches = parse(raw, "mistral")?;
    if let Some(w) = s.sliding_window {
        check_dimensions(&[("sliding_window", w)])?;
    }
    shape.sliding_window = s.sliding_window;
    Ok(shape)
}
