//! Resolving what a config names: devices, models (HF directories or the
//! built-in tiny GPT-NeoX) and their tokenizers; and the progress bar of
//! long commands.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use tch::{Device, Kind};

use super::builtin::{self, BUILTIN_MODEL};
use super::error::TrainError;
use crate::device::DeviceSpec;
use crate::run_dir::io_at;
use crate::torch::config::ModelConfig;
use crate::torch::nn::LoraSpec;
use crate::torch::peft::{is_adapter_dir, read_adapter_config};
use crate::torch::tokenizer::Tokenizer;
use crate::torch::{Head, LanguageModel, TorchError};

/// The libtorch device that config key or flag `key` names, if this
/// machine has it.
pub fn device_of(spec: DeviceSpec, key: &str) -> Result<Device, TrainError> {
    spec.resolve()
        .map_err(|why| TrainError::Input(format!("{key}: {why}")))
}

/// The prefix of a model made from a config alone: `random:PATH`.
pub const RANDOM_PREFIX: &str = "random:";

/// What a model key names.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSource {
    /// `builtin:tiny-neox`: the built-in task's seeded tiny GPT-NeoX.
    Builtin,
    /// `random:PATH`: the shape of a config file (PATH, or PATH/config.json
    /// when PATH is a directory) with seeded random weights
    /// ([`LanguageModel::random`]); the tokenizer beside it, or the built-in
    /// character tokenizer where there is none.
    Random(PathBuf),
    /// A PEFT LoRA adapter directory (`adapter_config.json`): its base
    /// model with the adapter on it.
    Adapter(PathBuf),
    /// An HF directory.
    Dir(PathBuf),
}

impl ModelSource {
    pub fn parse(spec: &str) -> ModelSource {
        if spec == BUILTIN_MODEL {
            ModelSource::Builtin
        } else if let Some(path) = spec.strip_prefix(RANDOM_PREFIX) {
            let path = Path::new(path);
            ModelSource::Random(if path.is_dir() {
                path.join("config.json")
            } else {
                path.to_path_buf()
            })
        } else if is_adapter_dir(Path::new(spec)) {
            ModelSource::Adapter(PathBuf::from(spec))
        } else {
            ModelSource::Dir(PathBuf::from(spec))
        }
    }

    /// The directory whose tokenizer files go with the model; none means
    /// the built-in character tokenizer.
    fn tokenizer_dir(&self) -> Option<PathBuf> {
        match self {
            ModelSource::Builtin => None,
            ModelSource::Random(config) => config
                .parent()
                .filter(|d| d.join("tokenizer.json").is_file())
                .map(Path::to_path_buf),
            ModelSource::Adapter(dir) if dir.join("tokenizer.json").is_file() => Some(dir.clone()),
            ModelSource::Adapter(dir) => read_adapter_config(dir).ok().and_then(|(_, base)| base),
            ModelSource::Dir(dir) => Some(dir.clone()),
        }
    }
}

/// The model named `spec` with `head`, in float32: `builtin:tiny-neox`,
/// `random:PATH` (both with weights drawn from `seed`) or an HF directory.
pub fn load_model(
    spec: &str,
    head: Head,
    seed: u64,
    device: Device,
) -> Result<LanguageModel, TrainError> {
    match ModelSource::parse(spec) {
        ModelSource::Adapter(dir) => load_adapter(spec, &dir, head, seed, device, None),
        ModelSource::Builtin => Ok(builtin::tiny_model(seed, device)?),
        ModelSource::Random(config) => {
            if !config.is_file() {
                return Err(TrainError::Input(format!(
                    "model `{spec}`: no config file at {}",
                    config.display()
                )));
            }
            let cfg = ModelConfig::load_file(&config)?;
            Ok(LanguageModel::random(cfg, head, device, seed)?)
        }
        ModelSource::Dir(dir) => {
            if !dir.join("config.json").is_file() {
                return Err(TrainError::Input(format!(
                    "model `{spec}`: no config.json there (an HF directory, {RANDOM_PREFIX}PATH/config.json or {BUILTIN_MODEL})"
                )));
            }
            Ok(LanguageModel::load(&dir, head, device, Kind::Float)?)
        }
    }
}

/// The policy `spec` names, with the LoRA adapters `lora` on it when given
/// ([C-LORA]; `A` drawn from `seed`, `B` zero); a PEFT adapter directory
/// brings its own adapters, which `lora` must then equal if given.
pub fn load_policy_with_lora(
    spec: &str,
    seed: u64,
    device: Device,
    lora: Option<LoraSpec>,
) -> Result<LanguageModel, TrainError> {
    let source = ModelSource::parse(spec);
    if let ModelSource::Adapter(dir) = &source {
        return load_adapter(spec, dir, Head::Lm, seed, device, lora.as_ref());
    }
    let Some(lora) = lora else {
        return load_model(spec, Head::Lm, seed, device);
    };
    match source {
        ModelSource::Dir(dir) if dir.join("config.json").is_file() => Ok(
            LanguageModel::load_with_lora(&dir, Head::Lm, device, Kind::Float, lora, seed)?,
        ),
        ModelSource::Random(config) if config.is_file() => {
            let cfg = ModelConfig::load_file(&config)?;
            let std = LanguageModel::initializer_range(&cfg)?;
            let model = LanguageModel::with_lora(cfg, Head::Lm, device, lora, seed)?;
            model.randomize(seed, std)?;
            Ok(model)
        }
        ModelSource::Builtin => {
            let tiny = builtin::tiny_model(seed, device)?;
            let mut model =
                LanguageModel::with_lora(tiny.config.clone(), Head::Lm, device, lora, seed)?;
            model.vs.copy(&tiny.vs).map_err(TorchError::from)?;
            Ok(model)
        }
        // What is missing, reported as load_model reports it.
        _ => load_model(spec, Head::Lm, seed, device),
    }
}

/// The base model a PEFT adapter directory names, with the adapter on it.
fn load_adapter(
    spec: &str,
    dir: &Path,
    head: Head,
    seed: u64,
    device: Device,
    expected: Option<&LoraSpec>,
) -> Result<LanguageModel, TrainError> {
    let (lora, base) = read_adapter_config(dir)?;
    if let Some(want) = expected.filter(|w| **w != lora) {
        return Err(TrainError::Input(format!(
            "model `{spec}`: its adapter has r = {}, alpha = {}, targets {:?}, the config's lora_* keys r = {}, alpha = {}, targets {:?}; leave lora_r at 0 to continue the adapter as it is",
            lora.r, lora.alpha, lora.targets, want.r, want.alpha, want.targets
        )));
    }
    let base = base.filter(|b| b.join("config.json").is_file()).ok_or_else(|| {
        TrainError::Input(format!(
            "model `{spec}`: adapter_config.json names no base model directory with a config.json (base_model_name_or_path)"
        ))
    })?;
    let model = LanguageModel::load_with_lora(&base, head, device, Kind::Float, lora, seed)?;
    model.load_adapters(dir)?;
    Ok(model)
}

/// The text of the `tokenizer.json` that goes with the model `spec`.
/// The tokenizer of model `spec` (a directory: its `tokenizer.json` and
/// `tokenizer_config.json`; or the built-in model's).
pub fn tokenizer_of(spec: &str, config: &ModelConfig) -> Result<Tokenizer, TrainError> {
    let source = ModelSource::parse(spec);
    match source.tokenizer_dir() {
        Some(dir) => Ok(Tokenizer::load(&dir, config)?),
        None if source == ModelSource::Builtin => {
            Ok(Tokenizer::from_json(&builtin::tokenizer_json(), config)?)
        }
        None => {
            // A random: shape with the character tokenizer: its config's
            // special ids name tokens of another vocabulary, so the
            // built-in model's (end of text, id 0) stand in for them.
            let own = ModelConfig::from_json(builtin::config_json())?;
            let ids = ModelConfig {
                eos_token_id: own.eos_token_id,
                eos_token_ids: own.eos_token_ids,
                pad_token_id: own.pad_token_id,
                bos_token_id: own.bos_token_id,
                ..config.clone()
            };
            Ok(Tokenizer::from_json(&builtin::tokenizer_json(), &ids)?)
        }
    }
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
        if let Some(dir) = ModelSource::parse(spec).tokenizer_dir() {
            for name in TOKENIZER_COMPANIONS {
                let path = dir.join(name);
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
    let Some(dir) = ModelSource::parse(spec).tokenizer_dir() else {
        return Ok(builtin::tokenizer_json());
    };
    let path = dir.join("tokenizer.json");
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
    // Against the model's own tokenizer.json; a random: model without one
    // has no vocabulary of its own to compare.
    let own_tokenizer = match ModelSource::parse(spec) {
        ModelSource::Builtin => true,
        source => source
            .tokenizer_dir()
            .is_some_and(|dir| dir.join("tokenizer.json").is_file()),
    };
    if own_tokenizer {
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
