//! `p3o reward-model train`: Bradley-Terry reward models (feature `torch`).
#![cfg_attr(not(feature = "torch"), allow(dead_code))]

use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum RewardModelCommand {
    /// Bradley-Terry training of a scalar-head model on chosen/rejected pairs.
    Train(RewardModelArgs),
}

#[derive(clap::Args)]
pub struct RewardModelArgs {
    /// HF directory to start from (a causal LM gets a new score head).
    #[arg(long)]
    base: Option<String>,
    /// JSON Lines of pairs: Anthropic HH {"chosen", "rejected"} or
    /// {"prompt", "chosen", "rejected"}.
    #[arg(long)]
    data: Option<String>,
    /// Output directory: metrics.jsonl and final/ (HF layout).
    #[arg(long)]
    out: PathBuf,
    /// TOML config (keys: README, "p3o reward-model train").
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. --set epochs=3.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// Trains into a fresh `--out` and prints the summary.
#[cfg(feature = "torch")]
pub fn run(c: RewardModelCommand) -> Result<(), super::error::CliError> {
    use p3o::train::reward_model::{RewardModelConfig, train_reward_model};

    use super::output::{claim_new_run, print_json};

    let RewardModelCommand::Train(a) = c;
    let mut sets = a.set.clone();
    if let Some(b) = &a.base {
        sets.push(format!("base = {b:?}"));
    }
    if let Some(d) = &a.data {
        sets.push(format!("data = {d:?}"));
    }
    let cfg = RewardModelConfig::load(a.config.as_deref(), &sets)?;
    claim_new_run(&a.out, "choose another --out")?;
    print_json(&train_reward_model(&cfg, &a.out)?)
}
