//! HF `config.json` of the supported architectures.

use std::path::Path;

use serde::Deserialize;

use super::{Result, TorchError, file_error};

/// GPT-NeoX (Pythia) hyper-parameters, HF field names.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct GptNeoxConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    /// Share of each head's channels that are rotated. Older configs call it
    /// `rotary_pct`, transformers 5 `rope_parameters.partial_rotary_factor`;
    /// [`ModelConfig::from_json`] resolves both.
    #[serde(default = "default_rotary_pct")]
    pub rotary_pct: f64,
    /// `rotary_emb_base`, or `rope_parameters.rope_theta`.
    #[serde(default = "default_rotary_base")]
    pub rotary_emb_base: f64,
    pub max_position_embeddings: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_true")]
    pub use_parallel_residual: bool,
    #[serde(default = "default_gelu")]
    pub hidden_act: String,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_true")]
    pub attention_bias: bool,
}

/// GPT-2 hyper-parameters, HF field names.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Gpt2Config {
    pub vocab_size: i64,
    pub n_embd: i64,
    pub n_layer: i64,
    pub n_head: i64,
    pub n_positions: i64,
    #[serde(default)]
    pub n_inner: Option<i64>,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_gelu_new")]
    pub activation_function: String,
}

fn default_rotary_pct() -> f64 {
    0.25
}
fn default_rotary_base() -> f64 {
    10000.0
}
fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_gelu() -> String {
    "gelu".into()
}
fn default_gelu_new() -> String {
    "gelu_new".into()
}

/// The architecture and its hyper-parameters, plus the token ids the HF
/// config carries.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub eos_token_id: Option<i64>,
    pub pad_token_id: Option<i64>,
    pub bos_token_id: Option<i64>,
    /// The raw config.json, kept so that saving writes it back unchanged.
    pub raw: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Architecture {
    GptNeox(GptNeoxConfig),
    Gpt2(Gpt2Config),
}

impl ModelConfig {
    /// Reads `dir/config.json`, then `dir/generation_config.json` for token
    /// ids the first one lacks.
    pub fn load(dir: &Path) -> Result<ModelConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path, e))?;
        let raw: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| file_error(&path, format!("malformed JSON: {e}")))?;
        let mut cfg = ModelConfig::from_json(raw).map_err(|e| match e {
            TorchError::Input(m) => file_error(&path, m),
            other => other,
        })?;
        let gen_path = dir.join("generation_config.json");
        if let Ok(text) = std::fs::read_to_string(&gen_path) {
            let generation: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| file_error(&gen_path, format!("malformed JSON: {e}")))?;
            cfg.eos_token_id = cfg
                .eos_token_id
                .or_else(|| token_id(&generation, "eos_token_id"));
            cfg.pad_token_id = cfg
                .pad_token_id
                .or_else(|| token_id(&generation, "pad_token_id"));
            cfg.bos_token_id = cfg
                .bos_token_id
                .or_else(|| token_id(&generation, "bos_token_id"));
        }
        Ok(cfg)
    }

    pub fn from_json(raw: serde_json::Value) -> Result<ModelConfig> {
        let model_type = raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("(missing)")
            .to_string();
        let parse_err =
            |e: serde_json::Error| TorchError::Input(format!("{model_type} config: {e}"));
        let arch = match model_type.as_str() {
            "gpt_neox" => {
                let mut c: GptNeoxConfig =
                    serde_json::from_value(raw.clone()).map_err(parse_err)?;
                if let Some(rope) = raw.get("rope_parameters").filter(|r| r.is_object()) {
                    let kind = rope
                        .get("rope_type")
                        .and_then(|t| t.as_str())
                        .unwrap_or("default");
                    if kind != "default" {
                        return Err(TorchError::Unsupported(format!(
                            "gpt_neox rope_type `{kind}` (only `default`)"
                        )));
                    }
                    if let Some(f) = rope.get("partial_rotary_factor").and_then(|v| v.as_f64()) {
                        c.rotary_pct = f;
                    }
                    if let Some(theta) = rope.get("rope_theta").and_then(|v| v.as_f64()) {
                        c.rotary_emb_base = theta;
                    }
                }
                if c.hidden_size % c.num_attention_heads != 0 {
                    return Err(TorchError::Input(
                        "hidden_size is not a multiple of num_attention_heads".into(),
                    ));
                }
                if c.hidden_act != "gelu" {
                    return Err(TorchError::Unsupported(format!(
                        "gpt_neox hidden_act `{}` (only `gelu`)",
                        c.hidden_act
                    )));
                }
                Architecture::GptNeox(c)
            }
            "gpt2" => {
                let c: Gpt2Config = serde_json::from_value(raw.clone()).map_err(parse_err)?;
                if c.n_embd % c.n_head != 0 {
                    return Err(TorchError::Input(
                        "n_embd is not a multiple of n_head".into(),
                    ));
                }
                if c.activation_function != "gelu_new" && c.activation_function != "gelu" {
                    return Err(TorchError::Unsupported(format!(
                        "gpt2 activation `{}`",
                        c.activation_function
                    )));
                }
                Architecture::Gpt2(c)
            }
            other => {
                return Err(TorchError::Unsupported(format!(
                    "model_type `{other}` (supported: gpt_neox, gpt2)"
                )));
            }
        };
        Ok(ModelConfig {
            arch,
            eos_token_id: token_id(&raw, "eos_token_id"),
            pad_token_id: token_id(&raw, "pad_token_id"),
            bos_token_id: token_id(&raw, "bos_token_id"),
            raw,
        })
    }

    pub fn vocab_size(&self) -> i64 {
        match &self.arch {
            Architecture::GptNeox(c) => c.vocab_size,
            Architecture::Gpt2(c) => c.vocab_size,
        }
    }

    pub fn hidden_size(&self) -> i64 {
        match &self.arch {
            Architecture::GptNeox(c) => c.hidden_size,
            Architecture::Gpt2(c) => c.n_embd,
        }
    }

    /// The longest sequence the position encoding supports.
    pub fn max_positions(&self) -> i64 {
        match &self.arch {
            Architecture::GptNeox(c) => c.max_position_embeddings,
            Architecture::Gpt2(c) => c.n_positions,
        }
    }
}

/// A token id field, which HF allows to be a list (the first is taken).
fn token_id(v: &serde_json::Value, field: &str) -> Option<i64> {
    match v.get(field)? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::Array(a) => a.first()?.as_i64(),
        _ => None,
    }
}
