//! LoRA adapters in PEFT's layout ([C-LORA]): `adapter_config.json` and
//! `adapter_model.safetensors`, whose tensors carry PEFT's names
//! (`base_model.model.<module path>.lora_A.weight`, `...lora_B.weight`), so
//! that `PeftModel.from_pretrained(base, dir)` opens what p3o trains and
//! p3o opens what PEFT trained.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::checkpoint::{read_tensors, write_tensors};
use super::error::{file_error, write_error};
use super::model::LanguageModel;
use super::nn::{LoraSpec, LoraTargets};
use super::{Result, TorchError};

/// The prefix PEFT puts before a module's path.
const PREFIX: &str = "base_model.model.";
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// Whether `dir` holds a PEFT adapter.
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file()
}

/// What `adapter_config.json` says: the adapters' shape, and the base
/// model it names (`base_model_name_or_path`, relative to `dir` when
/// relative and present there).
pub fn read_adapter_config(dir: &Path) -> Result<(LoraSpec, Option<PathBuf>)> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path, e))?;
    let v: Value = crate::json::from_str_strict(&text)
        .map_err(|e| file_error(&path, format!("malformed JSON: {e}")))?;
    let bad = |m: String| file_error(&path, m);
    if v["peft_type"].as_str() != Some("LORA") {
        return Err(bad(format!("peft_type {} is not \"LORA\"", v["peft_type"])));
    }
    let r = v["r"]
        .as_i64()
        .filter(|&r| r >= 1)
        .ok_or_else(|| bad(format!("r {} must be an integer >= 1", v["r"])))?;
    let alpha = v["lora_alpha"]
        .as_f64()
        .filter(|a| a.is_finite() && *a > 0.0)
        .ok_or_else(|| {
            bad(format!(
                "lora_alpha {} must be a positive number",
                v["lora_alpha"]
            ))
        })?;
    // What would change the function beyond `W + (alpha / r) B A` on the
    // named modules is refused, not ignored.
    let set = |field: &str| match &v[field] {
        Value::Null | Value::Bool(false) => false,
        Value::Object(o) => !o.is_empty(),
        // `bias = "none"` is the one string that changes nothing.
        Value::String(s) => field != "bias" || s != "none",
        _ => true,
    };
    for (field, unsupported) in [
        "use_rslora",
        "use_dora",
        "lora_bias",
        "bias",
        "modules_to_save",
        "rank_pattern",
        "alpha_pattern",
        "layers_to_transform",
        "exclude_modules",
        "target_parameters",
        "trainable_token_indices",
    ]
    .map(|f| (f, set(f)))
    {
        if unsupported {
            return Err(bad(format!("`{field}` = {} is not supported", v[field])));
        }
    }
    let names: Vec<String> = match &v["target_modules"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        other => {
            return Err(bad(format!(
                "target_modules {other} is not a list of module names"
            )));
        }
    };
    let targets = LoraTargets::parse(&names).map_err(|m| bad(format!("target_modules {m}")))?;
    let base = v["base_model_name_or_path"].as_str().map(|b| {
        let rel = dir.join(b);
        if Path::new(b).is_relative() && rel.join("config.json").is_file() {
            rel
        } else {
            PathBuf::from(b)
        }
    });
    Ok((LoraSpec { r, alpha, targets }, base))
}

impl LanguageModel {
    /// Writes the adapters in PEFT's layout into `dir` (through temporary
    /// names and renames), naming `base` as the base model.
    pub fn save_adapters(&self, dir: &Path, base: &str) -> Result<()> {
        let (Some(spec), Some(vs)) = (self.lora.spec(), self.lora.var_store()) else {
            return Err(TorchError::Input("this model has no LoRA adapters".into()));
        };
        std::fs::create_dir_all(dir).map_err(|e| write_error(dir, e))?;
        let mut tensors: Vec<(String, tch::Tensor)> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| (format!("{PREFIX}{n}"), t))
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        write_tensors(&tensors, &dir.join(ADAPTER_WEIGHTS))?;
        let targets = match &spec.targets {
            LoraTargets::AllLinear => json!("all-linear"),
            LoraTargets::Modules(m) => json!(m),
        };
        let config = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base,
            "r": spec.r,
            "lora_alpha": spec.alpha,
            "lora_dropout": 0.0,
            "target_modules": targets,
            "bias": "none",
            "fan_in_fan_out": self.config.arch.fan_in_fan_out(),
            "init_lora_weights": true,
            "inference_mode": true,
            "use_rslora": false,
            "use_dora": false,
            "modules_to_save": null,
        });
        let path = dir.join(ADAPTER_CONFIG);
        let tmp = dir.join(".adapter_config.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_string_pretty(&config).expect("a JSON value serialises"),
        )
        .map_err(|e| write_error(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| write_error(&path, e))
    }

    /// Loads the adapter tensors of `dir` (PEFT's layout) into this model's
    /// adapters: every one of its factors must be there with its shape.
    pub fn load_adapters(&self, dir: &Path) -> Result<()> {
        let Some(vs) = self.lora.var_store() else {
            return Err(TorchError::Input("this model has no LoRA adapters".into()));
        };
        let path = dir.join(ADAPTER_WEIGHTS);
        let saved = read_tensors(&path, vs.device())?;
        let mut wanted = vs.variables();
        for (name, t) in &saved {
            // PEFT may name the adapter (`lora_A.default.weight`) or not.
            let key = name
                .strip_prefix(PREFIX)
                .unwrap_or(name)
                .replace(".default.weight", ".weight");
            let Some(mut var) = wanted.remove(&key) else {
                return Err(file_error(
                    &path,
                    format!("`{name}` is no adapter of this model"),
                ));
            };
            if var.size() != t.size() {
                return Err(file_error(
                    &path,
                    format!(
                        "`{name}` has shape {:?}, the model's adapter {:?}",
                        t.size(),
                        var.size()
                    ),
                ));
            }
            tch::no_grad(|| var.f_copy_(&t.to_kind(var.kind())))?;
        }
        if let Some(missing) = wanted.keys().min() {
            return Err(file_error(
                &path,
                format!("no tensor for the adapter `{PREFIX}{missing}`"),
            ));
        }
        Ok(())
    }
}
