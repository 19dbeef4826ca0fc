//! `p3o sft`: supervised fine-tuning (feature `torch`).
#![cfg_attr(not(feature = "torch"), allow(dead_code))]

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct SftArgs {
    /// TOML config (keys: README, "p3o sft").
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output directory: metrics.jsonl and final/ (HF layout).
    #[arg(long)]
    out: PathBuf,
    /// Override a config key, e.g. --set steps=300 --set base=DIR.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// Trains into a fresh `--out` and prints the summary.
#[cfg(feature = "torch")]
pub fn run(a: SftArgs) -> Result<(), super::error::CliError> {
    use p3o::train::sft::{SftConfig, run_sft};

    use super::output::{claim_new_run, print_json};

    let cfg = SftConfig::load(a.config.as_deref(), &a.set)?;
    claim_new_run(&a.out, "choose another --out")?;
    print_json(&run_sft(&cfg, &a.out)?)
}
