//! Qwen3 (`Qwen3ForCausalLM`, `Qwen3ForSequenceClassification`): the Llama
//! decoder with a per-head RMSNorm on queries and keys (`q_norm`,
//! `k_norm`) before the rotation, an explicit `head_dim` (128 when
//! absent), and `attention_bias` on q, k, v and o.

use serde::Deserialize;

use super::fields::parse;
use super::llama::{DecoderShape, Defaults};
use super::qwen2::WindowSwitches;
use crate::torch::Result;

#[derive(Deserialize)]
struct Qwen3Switches {
    #[serde(default)]
    attention_bias: bool,
}

pub fn shape(raw: &serde_json::Value) -> Result<DecoderShape> {
    let mut shape = DecoderShape::common(
        raw,
        "qwen3",
        Defaults {
            rms_norm_eps: 1e-6,
            max_position_embeddings: 32768,
            head_dim: Some(128),
            tie_word_embeddings: false,
            rope_theta: 10000.0,
        },
    )?;
    parse::<WindowSwitches>(raw, "qwen3")?.refuse_sliding("qwen3")?;
    let s: Qwen3Switches = parse(raw, "qwen3")?;
    shape.qkv_bias = s.attention_bias;
    shape.o_bias = s.attention_bias;
    shape.qk_norm = true;
    Ok(shape)
}
