//! Qwen2 and Qwen2.5 (`Qwen2ForCausalLM`, `Qwen2ForSequenceClassification`):
//! the Llama decoder with biases on q, k and v (none on o or the MLP).
//! Sliding-window layers (`use_sliding_window = true`, or `layer_types`
//! naming `sliding_attention`) are refused by name: not implemented.

use serde::Deserialize;

use super::fields::parse;
use super::llama::{DecoderShape, Defaults};
use crate::torch::{Result, TorchError};

#[derive(Deserialize)]
pub(super) struct WindowSwitches {
    #[serde(default)]
    use_sliding_window: bool,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
}

impl WindowSwitches {
    /// Refuses sliding-window layers, which Qwen2 and Qwen3 configs can
    /// switch on for some layers.
    pub(super) fn refuse_sliding(&self, family: &str) -> Result<()> {
        let sliding = self
            .layer_types
            .iter()
            .flatten()
            .any(|t| t == "sliding_attention");
        if self.use_sliding_window || sliding {
            return Err(TorchError::Unsupported(format!(
                "{family} with sliding-window layers (use_sliding_window = true or layer_types `sliding_attention`); only full attention is implemented for {family}"
            )));
        }
        if let Some(t) = self
            .layer_types
            .iter()
            .flatten()
            .find(|t| t.as_str() != "full_attention")
        {
            return Err(TorchError::Unsupported(format!(
                "{family} layer type `{t}` (supported: full_attention)"
            )));
        }
        Ok(())
    }
}

pub fn shape(raw: &serde_json::Value) -> Result<DecoderShape> {
    let mut shape = DecoderShape::common(
        raw,
        "qwen2",
        Defaults {
            rms_norm_eps: 1e-6,
            max_position_embeddings: 32768,
            head_dim: None,
            tie_word_embeddings: false,
            rope_theta: 10000.0,
        },
    )?;
    parse::<WindowSwitches>(raw, "qwen2")?.refuse_sliding("qwen2")?;
    shape.qkv_bias = true;
    Ok(shape)
}
