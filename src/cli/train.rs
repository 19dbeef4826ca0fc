//! `p3o train`: RLHF training (P3O-V1, P3O-V2, online DPO, PPO; feature
//! `torch`).
#![cfg_attr(not(feature = "torch"), allow(dead_code))]

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// TOML config (every key optional; README lists them).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output directory: metrics.jsonl, checkpoints/, final/.
    #[arg(long)]
    out: PathBuf,
    /// Override a config key, e.g. --set algorithm=p3o-v1 --set lr=1e-3.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Add delta(prompt) to every reward: const:C or random:A[:SEED].
    #[arg(long)]
    reward_shift: Option<p3o::reference::shift::RewardShift>,
    /// Continue from the last complete checkpoint in --out.
    #[arg(long)]
    resume: bool,
}

/// Trains to the config's last step, appending to (with `--resume`) or
/// starting `--out`; prints the last step's metrics line.
#[cfg(feature = "torch")]
pub fn run(a: TrainArgs) -> Result<(), super::error::CliError> {
    use p3o::train::config::TrainConfig;
    use p3o::train::trainer::Trainer;

    use super::output::{fresh_output, print_json};

    let cfg = TrainConfig::load(a.config.as_deref(), &a.set)?;
    if !a.resume {
        fresh_output(
            &a.out,
            "metrics.jsonl",
            "run",
            "pass --resume to continue it, or choose another --out",
        )?;
    }
    let mut trainer = Trainer::new(cfg, &a.out, a.reward_shift)?;
    if a.resume {
        match trainer.resume()? {
            Some(n) => eprintln!("resuming from step {n}"),
            None => eprintln!("no checkpoint in {}; starting afresh", a.out.display()),
        }
    }
    let last = trainer.run()?;
    print_json(&last)?;
    eprintln!(
        "metrics: {}  final policy: {}",
        a.out.join("metrics.jsonl").display(),
        a.out.join("final").display()
    );
    Ok(())
}
