//! `p3o train`: RLHF training (P3O-V1, P3O-V2, online DPO, PPO, RLOO, GRPO,
//! p3o-trlx; feature
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
    /// Multiply every reward by c(prompt), a power of two drawn in
    /// [LO, HI], before any shift: random:LO:HI[:SEED].
    #[arg(long)]
    reward_scale: Option<p3o::reference::shift::RewardScale>,
    /// Continue from the last complete checkpoint in --out.
    #[arg(long)]
    resume: bool,
}

/// Trains to the config's last step, appending to (with `--resume`) or
/// starting `--out`; prints the last step's metrics line.
#[cfg(feature = "torch")]
pub fn run(a: TrainArgs) -> Result<(), super::error::CliError> {
    use p3o::train::config::TrainConfig;
    use p3o::train::trainer::{Resumed, Trainer};

    use p3o::run_dir::{Contents, checkpoint_steps, contents, only_early_run_files};

    use super::error::CliError;
    use super::output::{claim_new_run, print_json};

    let cfg = TrainConfig::load(a.config.as_deref(), &a.set)?;
    // README, "Output directories and --resume": a new run needs an absent
    // or empty --out; --resume needs a complete checkpoint there, or no more
    // than a run killed before its first one.
    let fresh = match contents(&a.out).map_err(CliError::Input)? {
        Contents::Run(names) if a.resume => {
            if checkpoint_steps(&a.out).is_empty() && !only_early_run_files(&names) {
                return Err(CliError::Input(format!(
                    "{} has no complete checkpoint (checkpoints/step-N/state.json) to resume from, and holds more than a run killed before its first one (it holds {}); choose another --out",
                    a.out.display(),
                    names.join(", ")
                )));
            }
            false
        }
        _ => true,
    };
    if fresh {
        claim_new_run(
            &a.out,
            "pass --resume to continue the run there, or choose another --out",
        )?;
    }
    let mut trainer = Trainer::new(cfg, &a.out, a.reward_shift)?.with_reward_scale(a.reward_scale);
    if a.resume {
        match trainer.resume()? {
            Resumed::From(n) => eprintln!("resuming from step {n}"),
            Resumed::Nothing => eprintln!(
                "no complete checkpoint in {}; starting the run from step 0",
                a.out.display()
            ),
            Resumed::Complete(n) => {
                eprintln!(
                    "the run in {} is complete at step {n}; nothing to do (raise `steps` to continue it)",
                    a.out.display()
                );
                return Ok(());
            }
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
