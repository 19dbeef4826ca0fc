//! `p3o bandit`: P3O-V1, P3O-V2 (on pairs and groups), PPO, online DPO,
//! RLOO, GRPO and p3o-trlx trained on a seeded random contextual bandit, with the exact KL and expected reward per step
//! and the reward-shift comparison ([C-THM2], [C-PPO-SHIFT]).

use std::io::{self, BufWriter, Write};

use clap::ValueEnum;

use p3o::bandit::{BanditConfig, run_all, summary_table, trajectory_table};
use p3o::bandit_frontier::{compare, comparison_table, frontiers};
use p3o::reference::shift::RewardShift;

use super::error::CliError;

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// A readable trajectory table and summary.
    Table,
    /// One JSON object per algorithm and step, then one summary object per
    /// algorithm.
    Jsonl,
}

#[derive(clap::Args)]
pub struct BanditArgs {
    /// Number of contexts X.
    #[arg(long, default_value_t = BanditConfig::default().contexts as u32, value_parser = clap::value_parser!(u32).range(1..))]
    contexts: u32,
    /// Number of actions K (at least 2).
    #[arg(long, default_value_t = BanditConfig::default().actions as u32, value_parser = clap::value_parser!(u32).range(2..))]
    actions: u32,
    /// Training iterations (each: new behaviour policy, new samples).
    #[arg(long, default_value_t = BanditConfig::default().steps)]
    steps: usize,
    /// Pairs sampled per iteration (contexts taken in turn).
    #[arg(long, default_value_t = BanditConfig::default().pairs as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pairs: u32,
    /// Responses per group of the grouped arms (P3O-V2 on groups, RLOO,
    /// GRPO), which sample 2 x --pairs / G groups per iteration.
    #[arg(long, default_value_t = BanditConfig::default().group_size as u32, value_parser = clap::value_parser!(u32).range(2..))]
    group_size: u32,
    /// Gradient steps on each sampled batch.
    #[arg(long, default_value_t = BanditConfig::default().epochs)]
    epochs: usize,
    /// Step size of plain gradient descent on the logits (and PPO's value).
    #[arg(long, default_value_t = BanditConfig::default().lr, value_parser = finite)]
    lr: f64,
    /// KL coefficient of the shaped reward (P3O, PPO).
    #[arg(long, default_value_t = BanditConfig::default().beta, value_parser = finite)]
    beta: f64,
    /// DPO's beta.
    #[arg(long, default_value_t = BanditConfig::default().dpo_beta, value_parser = finite)]
    dpo_beta: f64,
    /// Clip half-width (a positive number, or `inf`).
    #[arg(long, default_value_t = BanditConfig::default().epsilon, value_parser = positive)]
    epsilon: f64,
    /// Weight of PPO's value loss.
    #[arg(long, default_value_t = BanditConfig::default().vf_coef, value_parser = finite)]
    vf_coef: f64,
    /// Seed of the bandit and of the samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also train on r + delta(x) and compare: `const:C` or `random:A[:SEED]`.
    #[arg(long)]
    reward_shift: Option<RewardShift>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Compare the arms' KL-reward frontiers over this many bandits (seeds
    /// --seed, --seed + 1, ...), every arm trained once per coefficient of
    /// --betas ([C-BANDIT-FRONTIER]).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10000))]
    frontier: Option<u32>,
    /// The KL coefficients of --frontier, comma-separated; each sets --beta
    /// and --dpo-beta.
    #[arg(long, value_delimiter = ',', default_values_t = [0.01, 0.03, 0.1, 0.3, 1.0], value_parser = finite)]
    betas: Vec<f64>,
    /// Table rows every this many steps.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    print_every: u32,
}

fn finite(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a finite number")),
    }
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a positive number (or `inf`)")),
    }
}

/// Trains every algorithm on the bandit and writes the trajectories.
pub fn run(args: BanditArgs) -> Result<(), CliError> {
    let cfg = BanditConfig {
        contexts: args.contexts as usize,
        actions: args.actions as usize,
        steps: args.steps,
        pairs: args.pairs as usize,
        group_size: args.group_size as usize,
        epochs: args.epochs,
        lr: args.lr,
        beta: args.beta,
        dpo_beta: args.dpo_beta,
        epsilon: args.epsilon,
        vf_coef: args.vf_coef,
        seed: args.seed,
    };
    cfg.check().map_err(CliError::Input)?;
    if let Some(bandits) = args.frontier {
        return frontier(&cfg, bandits as usize, &args);
    }
    let runs = run_all(&cfg, args.reward_shift);
    let mut out = BufWriter::new(io::stdout().lock());
    match args.format {
        Format::Table => {
            writeln!(
                out,
                "{}",
                trajectory_table(&runs, args.print_every as usize)
            )?;
            write!(out, "{}", summary_table(&runs))?;
        }
        Format::Jsonl => {
            for run in &runs {
                for (label, traj) in [("r", Some(&run.plain)), ("r+delta", run.shifted.as_ref())] {
                    for m in traj.into_iter().flatten() {
                        let line = serde_json::json!({
                            "algorithm": run.algorithm.name(), "group_size": run.group_size,
                            "arm": run.label, "rewards": label,
                            "step": m.step, "kl": m.kl, "reward": m.reward,
                        });
                        writeln!(out, "{line}")?;
                    }
                }
            }
            for run in &runs {
                let last = run.plain.last();
                let line = serde_json::json!({
                    "summary": true, "algorithm": run.algorithm.name(),
                    "group_size": run.group_size, "arm": run.label,
                    "final_kl": last.map(|m| m.kl), "final_reward": last.map(|m| m.reward),
                    "max_shift_difference": run.max_shift_difference(),
                });
                writeln!(out, "{line}")?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// `--frontier`: every arm's frontier on `bandits` bandits and the
/// comparisons of every ordered pair of arms ([C-BANDIT-FRONTIER]).
fn frontier(cfg: &BanditConfig, bandits: usize, args: &BanditArgs) -> Result<(), CliError> {
    if args.reward_shift.is_some() {
        return Err(CliError::Input(
            "--frontier compares arms on the unshifted reward; leave out --reward-shift".into(),
        ));
    }
    if let Some(b) = args.betas.iter().find(|&&b| b < 0.0) {
        return Err(CliError::Input(format!("--betas: {b} must be >= 0")));
    }
    for &beta in &args.betas {
        BanditConfig {
            beta,
            dpo_beta: beta,
            ..cfg.clone()
        }
        .check()
        .map_err(CliError::Input)?;
    }
    let rows = compare(&frontiers(cfg, bandits, &args.betas), cfg.seed);
    let mut out = BufWriter::new(io::stdout().lock());
    match args.format {
        Format::Table => write!(out, "{}", comparison_table(&rows))?,
        Format::Jsonl => {
            for r in &rows {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(r).map_err(io::Error::other)?
                )?;
            }
        }
    }
    out.flush()?;
    Ok(())
}
