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

/// The largest tensor dimension a config may ask for: 2^31, far above any
/// real model, and small enough that products of two stay within `i64`.
pub const MAX_DIMENSION: i64 = 1 << 31;

/// `field` is an integer in `1..=MAX_DIMENSION`.
fn check_dimension(field: &str, v: i64) -> Result<()> {
    if (1..=MAX_DIMENSION).contains(&v) {
        Ok(())
    } else {
        Err(TorchError::Input(format!(
            "field `{field}`: {v} must be in 1..={MAX_DIMENSION}"
        )))
    }
}

/// The field `label` names (in backticks, with its other spelling) is
/// finite and positive.
fn check_positive(label: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(TorchError::Input(format!(
            "field {label}: {v} must be finite and positive"
        )))
    }
}

/// `divisor` divides `field` (both already checked positive).
fn check_divides(field: &str, v: i64, divisor_field: &str, divisor: i64) -> Result<()> {
    if v % divisor == 0 {
        Ok(())
    } else {
        Err(TorchError::Input(format!(
            "field `{field}`: {v} is not a multiple of `{divisor_field}` ({divisor})"
        )))
    }
}

impl GptNeoxConfig {
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// `r = int(head_dim * rotary_pct)`, the `dim` of HF's rotary
    /// frequencies `base^(-2i / r)`, `ceil(r / 2)` of them. HF rotates as
    /// many channels as its cos/sin tables have, `2 ceil(r / 2)`: one more
    /// than `r` when `r` is odd.
    pub fn rotary_frequency_dims(&self) -> i64 {
        (self.head_dim() as f64 * self.rotary_pct) as i64
    }

    /// Sizes positive and bounded, heads dividing the hidden size, the
    /// rotated channels within a head, a positive rotary base and norm
    /// epsilon: every field the model's shapes depend on, each error
    /// naming its field.
    pub fn check(&self) -> Result<()> {
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            check_dimension(field, v)?;
        }
        check_divides(
            "hidden_size",
            self.hidden_size,
            "num_attention_heads",
            self.num_attention_heads,
        )?;
        if !(self.rotary_pct > 0.0 && self.rotary_pct <= 1.0) {
            return Err(TorchError::Input(format!(
                "field `rotary_pct` (`partial_rotary_factor`): {} must be in (0, 1]",
                self.rotary_pct
            )));
        }
        let r = self.rotary_frequency_dims();
        let rotated = 2 * ((r + 1) / 2);
        if rotated > self.head_dim() {
            return Err(TorchError::Input(format!(
                "field `rotary_pct`: {} of a head of {} channels gives {r} rotary dimensions, rotated in pairs as {rotated}, more than the head has",
                self.rotary_pct,
                self.head_dim()
            )));
        }
        check_positive("`rope_theta` (`rotary_emb_base`)", self.rotary_emb_base)?;
        check_positive("`layer_norm_eps`", self.layer_norm_eps)
    }
}

impl Gpt2Config {
    /// As [`GptNeoxConfig::check`], for GPT-2's fields.
    pub fn check(&self) -> Result<()> {
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_positions", self.n_positions),
        ] {
            check_dimension(field, v)?;
        }
        if let Some(inner) = self.n_inner {
            check_dimension("n_inner", inner)?;
        }
        check_divides("n_embd", self.n_embd, "n_head", self.n_head)?;
        check_positive("`layer_norm_epsilon`", self.layer_norm_epsilon)
    }
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
        let raw: serde_json::Value = crate::json::from_str_strict(&text)
            .map_err(|e| file_error(&path, format!("malformed JSON: {e}")))?;
        let mut cfg = ModelConfig::from_json(raw).map_err(|e| match e {
            TorchError::Input(m) => file_error(&path, m),
            TorchError::Unsupported(m) => file_error(&path, format!("unsupported model: {m}")),
            other => other,
        })?;
        let gen_path = dir.join("generation_config.json");
        if let Ok(text) = std::fs::read_to_string(&gen_path) {
            let generation: serde_json::Value = crate::json::from_str_strict(&text)
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
        cfg.check_token_ids().map_err(|e| match e {
            TorchError::Input(m) => file_error(&gen_path, m),
            other => other,
        })?;
        Ok(cfg)
    }

    pub fn from_json(raw: serde_json::Value) -> Result<ModelConfig> {
        let model_type = raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("(missing)")
            .to_string();
        let parse_err = |e: serde_path_to_error::Error<serde_json::Error>| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let message = crate::json::message_and_column(&inner).0;
            if field == "." {
                TorchError::Input(format!("{model_type} config: {message}"))
            } else {
                TorchError::Input(format!("field `{field}`: {message}"))
            }
        };
        let arch = match model_type.as_str() {
            "gpt_neox" => {
                let mut c: GptNeoxConfig =
                    serde_path_to_error::deserialize(raw.clone()).map_err(parse_err)?;
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
                    if let Some(f) = rope_number(rope, "partial_rotary_factor")? {
                        c.rotary_pct = f;
                    }
                    if let Some(theta) = rope_number(rope, "rope_theta")? {
                        c.rotary_emb_base = theta;
                    }
                }
                c.check()?;
                if c.hidden_act != "gelu" {
                    return Err(TorchError::Unsupported(format!(
                        "gpt_neox hidden_act `{}` (only `gelu`)",
                        c.hidden_act
                    )));
                }
                Architecture::GptNeox(c)
            }
            "gpt2" => {
                let c: Gpt2Config =
                    serde_path_to_error::deserialize(raw.clone()).map_err(parse_err)?;
                c.check()?;
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
        let cfg = ModelConfig {
            arch,
            eos_token_id: token_id(&raw, "eos_token_id"),
            pad_token_id: token_id(&raw, "pad_token_id"),
            bos_token_id: token_id(&raw, "bos_token_id"),
            raw,
        };
        cfg.check_token_ids()?;
        Ok(cfg)
    }

    /// The special token ids the config names lie in `0..vocab_size`.
    pub fn check_token_ids(&self) -> Result<()> {
        let vocab = self.vocab_size();
        for (field, id) in [
            ("eos_token_id", self.eos_token_id),
            ("pad_token_id", self.pad_token_id),
            ("bos_token_id", self.bos_token_id),
        ] {
            if let Some(id) = id.filter(|id| !(0..vocab).contains(id)) {
                return Err(TorchError::Input(format!(
                    "field `{field}`: {id} is not a token id in 0..{vocab} (vocab_size)"
                )));
            }
        }
        Ok(())
    }

    /// The number of weights of the body and its LM head (an upper bound:
    /// a tied head is counted once more), in 128 bits so that no config
    /// can overflow it.
    pub fn parameter_count(&self) -> u128 {
        let n = |v: i64| v.max(0) as u128;
        match &self.arch {
            Architecture::GptNeox(c) => {
                let (h, f) = (n(c.hidden_size), n(c.intermediate_size));
                let layer = 4 * h * h + 2 * h * f + 9 * h + f;
                2 * n(c.vocab_size) * h + n(c.num_hidden_layers) * layer + 2 * h
            }
            Architecture::Gpt2(c) => {
                let h = n(c.n_embd);
                let f = c.n_inner.map_or(4 * h, n);
                let layer = 4 * h * h + 2 * h * f + 9 * h + f;
                2 * n(c.vocab_size) * h + n(c.n_positions) * h + n(c.n_layer) * layer + 2 * h
            }
        }
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

/// A number in `rope_parameters`, if the field is there.
fn rope_number(rope: &serde_json::Value, field: &str) -> Result<Option<f64>> {
    match rope.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| {
            TorchError::Input(format!(
                "field `rope_parameters.{field}`: expected a number, got {v}"
            ))
        }),
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
