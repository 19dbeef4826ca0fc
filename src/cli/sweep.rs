//! `p3o sweep`: every arm over seeds and KL coefficients, resumable
//! ([C-SWEEP]; feature `torch`).
#![cfg_attr(not(feature = "torch"), allow(dead_code))]

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct SweepArgs {
    /// Output directory: sweep.toml, report.md, results.json, figures and
    /// every unit's files. A directory holding a sweep of the same
    /// configuration is resumed.
    #[arg(long)]
    out: PathBuf,
    /// Seeds: the pipeline's `seed` key and the ones after it (default 5,
    /// 2 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    seeds: Option<u32>,
    /// KL coefficients, comma-separated: `beta` of every arm, DPO's beta
    /// included (default 0.03,0.1; 0.05 with --quick).
    #[arg(long, value_delimiter = ',')]
    betas: Option<Vec<f64>>,
    /// KL budgets of the envelope means, comma-separated (nats).
    #[arg(long, value_delimiter = ',')]
    kl_budgets: Option<Vec<f64>>,
    /// Increasing KL bin edges of the binned frontier, comma-separated.
    #[arg(long, value_delimiter = ',')]
    kl_bins: Option<Vec<f64>>,
    /// The small sweep (about two minutes on 2 cores; what CI runs).
    #[arg(long)]
    quick: bool,
    /// TOML config of the pipeline's stages (the keys of `p3o demo`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a stage key, e.g. --set rl_steps=100.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[cfg(feature = "torch")]
pub fn run(a: SweepArgs) -> Result<(), super::error::CliError> {
    use p3o::demo::DemoConfig;
    use p3o::sweep::config::SweepConfig;
    use p3o::sweep::run::run_sweep;

    let mut cfg = SweepConfig::defaults(a.quick);
    // The stages: the sweep's defaults under the file under the --sets.
    let mut stages = DemoConfig::load_over(&cfg.stages, a.config.as_deref(), &a.set)?;
    stages.reward_shift = String::new();
    cfg.stages = stages;
    if let Some(n) = a.seeds {
        cfg.seeds = n as usize;
    }
    if let Some(b) = a.betas {
        cfg.betas = b;
    }
    if let Some(b) = a.kl_budgets {
        cfg.kl_budgets = b;
    }
    if let Some(b) = a.kl_bins {
        cfg.kl_bins = b;
    }
    cfg.check()?;
    let results = run_sweep(&cfg, &a.out)?;
    eprintln!("report: {}", a.out.join("report.md").display());
    let largest = cfg.kl_budgets.iter().copied().fold(0.0, f64::max);
    for row in results
        .analysis
        .envelopes
        .iter()
        .filter(|e| e.budget == largest)
    {
        eprintln!(
            "  {:5} {:10} envelope mean up to KL {largest}: {:7.3} over {} seeds",
            row.reward.name(),
            row.arm,
            row.value.mean,
            row.value.seeds
        );
    }
    Ok(())
}
