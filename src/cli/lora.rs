//! `p3o lora merge`: a PEFT LoRA adapter folded into its base model, written
//! as a full HF checkpoint ([C-LORA]; feature `torch`).
#![cfg_attr(not(feature = "torch"), allow(dead_code))]

use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum LoraCommand {
    /// Write base + adapter as one HF checkpoint (`W + (alpha / r) B A` in
    /// every adapted projection).
    Merge(MergeArgs),
}

#[derive(clap::Args)]
pub struct MergeArgs {
    /// The base HF directory (default: the adapter's
    /// `base_model_name_or_path`).
    #[arg(long)]
    base: Option<PathBuf>,
    /// The PEFT adapter directory (`adapter_config.json`,
    /// `adapter_model.safetensors`).
    #[arg(long)]
    adapter: PathBuf,
    /// A new output directory: config.json, model.safetensors and the
    /// base's tokenizer files.
    #[arg(long)]
    out: PathBuf,
}

/// Merges into a fresh `--out` and prints where it went.
#[cfg(feature = "torch")]
pub fn run(c: LoraCommand) -> Result<(), super::error::CliError> {
    use p3o::torch::peft::read_adapter_config;
    use p3o::torch::{Head, LanguageModel};
    use p3o::train::models::TokenizerFiles;
    use tch::{Device, Kind};

    use super::error::CliError;
    use super::output::{claim_new_run, print_json};

    let LoraCommand::Merge(a) = c;
    let (spec, named) = read_adapter_config(&a.adapter)?;
    let base = a.base.or(named).ok_or_else(|| {
        CliError::Input(format!(
            "{}: adapter_config.json names no base model; pass --base",
            a.adapter.display()
        ))
    })?;
    if !base.join("config.json").is_file() {
        return Err(CliError::Input(format!(
            "the base model `{}` (--base, or the adapter's base_model_name_or_path) is not an HF model directory (no config.json)",
            base.display()
        )));
    }
    let model = LanguageModel::load_with_lora(&base, Head::Lm, Device::Cpu, Kind::Float, spec, 0)?;
    model.load_adapters(&a.adapter)?;
    model.merge_adapters()?;
    let files = TokenizerFiles::of(&base.display().to_string())?;
    claim_new_run(&a.out, "choose another --out")?;
    model.save(&a.out)?;
    files.write(&a.out)?;
    print_json(&serde_json::json!({
        "merged": a.out.display().to_string(),
        "base": base.display().to_string(),
        "adapter": a.adapter.display().to_string(),
    }))
}
