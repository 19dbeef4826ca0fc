//! Resolving what a config names: devices, models (HF directories or the
//! built-in tiny GPT-NeoX) and their tokenizers; and the progress bar of
//! long commands.

use std::io::IsTerminal;
use std::path::Path;

use tch::{Device, Kind};

use super::builtin::{self, BUILTIN_MODEL};
use super::error::TrainError;
use crate::device::DeviceSpec;
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
pub fn tokenizer_json_of(spec: &str) -> Result<String, TrainError> {
    if spec == BUILTIN_MODEL {
        return Ok(builtin::tokenizer_json());
    }
    let path = Path::new(spec).join("tokenizer.json");
    std::fs::read_to_string(&path)
        .map_err(|e| TrainError::Input(format!("{}: {e}", path.display())))
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
