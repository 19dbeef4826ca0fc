//! A model's `config.json` (and `generation_config.json`): its family's
//! checked hyper-parameters ([`crate::torch::models`]) and the special
//! token ids.

use std::path::Path;

pub use super::models::fields::MAX_DIMENSION;
pub use super::models::{Architecture, Family, HeadSpec};
use super::{Result, TorchError, file_error};

/// The architecture and its hyper-parameters, plus the token ids the HF
/// config carries.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Architecture,
    /// The first end-of-sequence id; [`Self::eos_token_ids`] has them all.
    pub eos_token_id: Option<i64>,
    /// Every end-of-sequence id: `eos_token_id` may be a list (Llama 3's
    /// `[128001, 128008, 128009]`), in `config.json` or
    /// `generation_config.json`, and both count.
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
    pub bos_token_id: Option<i64>,
    /// The raw config.json, kept so that saving writes it back unchanged.
    pub raw: serde_json::Value,
}

impl ModelConfig {
    /// Reads `dir/config.json`, then `dir/generation_config.json`: its
    /// end-of-sequence ids join the config's, and its pad and BOS ids fill
    /// in those the first one lacks.
    pub fn load(dir: &Path) -> Result<ModelConfig> {
        ModelConfig::load_file(&dir.join("config.json"))
    }

    /// [`ModelConfig::load`] of a config file by any name; the
    /// `generation_config.json` beside it counts too.
    pub fn load_file(path: &Path) -> Result<ModelConfig> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
        let raw: serde_json::Value = crate::json::from_str_strict(&text)
            .map_err(|e| file_error(path, format!("malformed JSON: {e}")))?;
        let mut cfg = ModelConfig::from_json(raw).map_err(|e| match e {
            TorchError::Input(m) => file_error(path, m),
            TorchError::Unsupported(m) => file_error(path, format!("unsupported model: {m}")),
            other => other,
        })?;
        let gen_path = dir.join("generation_config.json");
        if let Ok(text) = std::fs::read_to_string(&gen_path) {
            cfg.merge_generation_config(&text)
                .map_err(|m| file_error(&gen_path, m))?;
        }
        Ok(cfg)
    }

    /// Takes the token ids of a `generation_config.json`'s text.
    fn merge_generation_config(&mut self, text: &str) -> std::result::Result<(), String> {
        let generation: serde_json::Value =
            crate::json::from_str_strict(text).map_err(|e| format!("malformed JSON: {e}"))?;
        let ids = |field| token_ids(&generation, field).map_err(|e| e.to_string());
        for id in ids("eos_token_id")? {
            if !self.eos_token_ids.contains(&id) {
                self.eos_token_ids.push(id);
            }
        }
        self.eos_token_id = self.eos_token_ids.first().copied();
        self.pad_token_id = self.pad_token_id.or(ids("pad_token_id")?.first().copied());
        self.bos_token_id = self.bos_token_id.or(ids("bos_token_id")?.first().copied());
        self.check_token_ids().map_err(|e| e.to_string())
    }

    /// The config of the family `raw` names, checked, with its token ids.
    pub fn from_json(raw: serde_json::Value) -> Result<ModelConfig> {
        let arch = super::models::registry::architecture(&raw)?;
        let eos_token_ids = token_ids(&raw, "eos_token_id")?;
        let cfg = ModelConfig {
            arch,
            eos_token_id: eos_token_ids.first().copied(),
            eos_token_ids,
            pad_token_id: token_ids(&raw, "pad_token_id")?.first().copied(),
            bos_token_id: token_ids(&raw, "bos_token_id")?.first().copied(),
            raw,
        };
        cfg.check_token_ids()?;
        Ok(cfg)
    }

    /// The special token ids the config names lie in `0..vocab_size`.
    pub fn check_token_ids(&self) -> Result<()> {
        let vocab = self.vocab_size();
        let named = self
            .eos_token_ids
            .iter()
            .map(|&id| ("eos_token_id", id))
            .chain(self.pad_token_id.map(|id| ("pad_token_id", id)))
            .chain(self.bos_token_id.map(|id| ("bos_token_id", id)));
        for (field, id) in named {
            if !(0..vocab).contains(&id) {
                return Err(TorchError::Input(format!(
                    "field `{field}`: {id} is not a token id in 0..{vocab} (vocab_size)"
                )));
            }
        }
        Ok(())
    }

    pub fn family(&self) -> Family {
        self.arch.family()
    }

    /// See [`Architecture::parameter_count`].
    pub fn parameter_count(&self) -> u128 {
        self.arch.parameter_count()
    }

    pub fn vocab_size(&self) -> i64 {
        self.arch.vocab_size()
    }

    pub fn hidden_size(&self) -> i64 {
        self.arch.hidden_size()
    }

    /// The longest sequence the position encoding supports.
    pub fn max_positions(&self) -> i64 {
        self.arch.max_positions()
    }
}

/// A token id field, which HF allows to be one id or a list of them;
/// `null` or absent is none. Anything else is an error naming the field.
fn token_ids(v: &serde_json::Value, field: &str) -> Result<Vec<i64>> {
    let bad = |got: &serde_json::Value| {
        TorchError::Input(format!(
            "field `{field}`: expected a token id or a list of them, got {got}"
        ))
    };
    match v.get(field) {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(n @ serde_json::Value::Number(_)) => Ok(vec![n.as_i64().ok_or_else(|| bad(n))?]),
        Some(serde_json::Value::Array(a)) => {
            a.iter().map(|x| x.as_i64().ok_or_else(|| bad(x))).collect()
        }
        Some(other) => Err(bad(other)),
    }
}
