//! `p3o demo`: the toy pipeline end to end (feature `torch`).
#![cfg_attr(not(feature = "torch"), allow(dead_code))]

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Output directory: report.md, figures, every stage's files.
    #[arg(long)]
    out: PathBuf,
    /// The small version (about a minute on 2 cores; what CI runs).
    #[arg(long)]
    quick: bool,
    /// TOML config (keys: README, "p3o demo").
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. --set rl_steps=100 --set seed=1.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// Runs the pipeline into an empty (or new) `--out` and prints the final
/// evaluation.
#[cfg(feature = "torch")]
pub fn run(a: DemoArgs) -> Result<(), super::error::CliError> {
    use p3o::demo::{DemoConfig, run_demo};

    use super::output::claim_new_run;

    let cfg = DemoConfig::load(a.quick, a.config.as_deref(), &a.set)?;
    claim_new_run(&a.out, "choose another --out")?;
    let results = run_demo(&cfg, &a.out)?;
    eprintln!("report: {}", a.out.join("report.md").display());
    for e in &results.final_eval {
        eprintln!(
            "  {:8} KL {:6.2}  proxy {:6.2}  gold {:6.2}",
            e.policy,
            e.kl.mean,
            e.reward.mean,
            e.gold_reward.as_ref().map_or(f64::NAN, |g| g.mean)
        );
    }
    Ok(())
}
