//! Resolving what a config names: devices, models (HF directories or the
//! built-in tiny GPT-NeoX) and their tokenizers; and the progress bar of
//! long commands.

use std::io::IsTerminal;
use std::path::Path;

use tch::{Device, Kind};

use super::builtin::{self, BUILTIN_MODEL};
use super::error::TrainError;
use crate::device::DeviceSpec;
use crate::run_dir::io_at;
use crate::torch::config::ModelConfig;
use crate::torch::tokenizer::Tokenizer;
use crate::torch::{Head, LanguageModel};

/// The libtorch device that config key or flag `key` names, if this
/// machine has it.
pub fn device_of(spec: DeviceSpec, key: &str) -> Result<Device, TrainError> {
    spec.resolve()
        .map_err(|why| TrainError::Input(format!("{key}: {why}")))
}

/// The model named `spec` with `head`: `builtin:tiny-neox` (seeded random
/// weights) or an HF directory, in float32.
pub fn load_model(
    spec: &str,
    head: Head,
    seed: u64,
    device: Device,
) -> Result<LanguageModel, TrainError> {
    if spec == BUILTIN_MODEL {
        return Ok(builtin::tiny_model(seed, device)?);
    }
    let dir = Path::new(spec);
    if !dir.join("config.json").is_file() {
        return Err(TrainError::Input(format!(
            "model `{spec}`: no config.json there (an HF directory or {BUILTIN_MODEL})"
        )));
    }
    Ok(LanguageModel::load(dir, head, device, Kind::Float)?)
}

/// The text of the `tokenizer.json` that goes with the model `spec`.
/// The tokenizer of model `spec` (a directory: its `tokenizer.json` and
/// `tokenizer_config.json`; or the built-in model's).
pub fn tokenizer_of(spec: &str, config: &ModelConfig) -> Result<Tokenizer, TrainError> {
    if spec == BUILTIN_MODEL {
        return Ok(Tokenizer::from_json(&builtin::tokenizer_json(), config)?);
    }
    Ok(Tokenizer::load(Path::new(spec), config)?)
}

/// The files a saved model carries beside its weights so that it tokenizes,
/// chats and stops as its source did: `tokenizer.json`, and where the
/// source has them `tokenizer_config.json`, `chat_template.jinja`,
/// `special_tokens_map.json` and `generation_config.json`; read once, when
/// a run starts.
pub struct TokenizerFiles(Vec<(&'static str, Vec<u8>)>);

/// The files besides `tokenizer.json` that [`TokenizerFiles`] copies.
const TOKENIZER_COMPANIONS: [&str; 4] = [
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "generation_config.json",
];

impl TokenizerFiles {
    /// Those of model `spec` (the built-in model has `tokenizer.json` only).
    pub fn of(spec: &str) -> Result<TokenizerFiles, TrainError> {
        let mut files = vec![("tokenizer.json", tokenizer_json_of(spec)?.into_bytes())];
        if spec != BUILTIN_MODEL {
            for name in TOKENIZER_COMPANIONS {
                let path = Path::new(spec).join(name);
                if path.is_file() {
                    files.push((name, std::fs::read(&path).map_err(io_at(&path))?));
                }
            }
        }
        Ok(TokenizerFiles(files))
    }

    /// Writes them into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), TrainError> {
        for (name, bytes) in &self.0 {
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(io_at(&path))?;
        }
        Ok(())
    }
}

pub fn tokenizer_json_of(spec: &str) -> Result<String, TrainError> {
    if spec == BUILTIN_MODEL {
        return Ok(builtin::tokenizer_json());
    }
    let path = Path::new(spec).join("tokenizer.json");
    std::fs::read_to_string(&path)
        .map_err(|e| TrainError::Input(format!("{}: {e}", path.display())))
}

/// The models a run compares token by token (the reference's log-probs, a
/// reward model's scores of the policy's ids, the policies `p3o eval`
/// samples) must read the same ids as the same tokens: the same
/// `vocab_size` as the model that owns the tokenizer, and, where the
/// model's directory has a `tokenizer.json`, the same vocabulary in it.
/// Otherwise the error names both: `what` (a config key or flag) with its
/// `spec`, and `owner`.
pub fn check_shared_vocabulary(
    what: &str,
    spec: &str,
    model: &LanguageModel,
    owner: &str,
    owner_model: &LanguageModel,
    tokenizer: &Tokenizer,
) -> Result<(), TrainError> {
    let refuse = |why: String| {
        Err(TrainError::Input(format!(
            "{what}: `{spec}` {why}; it must share the tokenizer of {owner}"
        )))
    };
    let (v, ov) = (model.config.vocab_size(), owner_model.config.vocab_size());
    if v != ov {
        return refuse(format!("has vocab_size {v}, {owner} {ov}"));
    }
    if spec == BUILTIN_MODEL || Path::new(spec).join("tokenizer.json").is_file() {
        let own = Tokenizer::from_json(&tokenizer_json_of(spec)?, &model.config)?;
        if !own.same_vocabulary(tokenizer) {
            return refuse(format!(
                "has a tokenizer.json with another vocabulary ({} tokens; {owner} has {})",
                own.vocabulary_size(),
                tokenizer.vocabulary_size()
            ));
        }
    }
    Ok(())
}

/// A progress bar on standard error when it is a terminal (hidden
/// otherwise), counting `len` units of `what`.
pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(len)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {what} {{elapsed_precise}} eta {{eta}} {{msg}}"
        ))
        .expect("a valid template"),
    );
    bar
}
