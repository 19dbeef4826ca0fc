//! The `p3o` command line.

use std::io::{self, BufRead, BufWriter, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use p3o::bandit::{BanditConfig, run_all, summary_table, trajectory_table};
use p3o::case::run_line;
use p3o::reference::shift::RewardShift;

mod lm;
mod pipeline;

#[derive(Parser)]
#[command(
    name = "p3o",
    version,
    about = "Pairwise Proximal Policy Optimization, verification-first"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Evaluate loss and gradient cases with the float64 reference: JSON Lines
    /// in on stdin, one result line out per case (schema: spec/p3o.md,
    /// C-CLI-REFERENCE).
    Reference,
    /// Train P3O-V1, P3O-V2, PPO and online DPO on a seeded random contextual
    /// bandit and report exact KL(pi || pi_ref) and expected reward per step.
    Bandit(BanditArgs),
    /// Per-token and total log-probs of responses under an HF model (JSON
    /// Lines: {"prompt_ids"|"prompt", "response_ids"|"response"}).
    Logprobs(lm::ModelArgs),
    /// Sample continuations of prompts from an HF model (JSON Lines in:
    /// {"prompt_ids"|"prompt"}; out: {"response_ids", "response"}).
    Generate(lm::GenerateArgs),
    /// Score prompt + response with an HF reward model (JSON Lines in as for
    /// logprobs; out: {"reward"}).
    Reward(lm::ModelArgs),
    /// RLHF training with P3O-V1, P3O-V2 or online DPO; with no --config, a
    /// built-in tiny task that runs on a CPU in minutes.
    Train(lm::TrainArgs),
    /// Supervised fine-tuning on prompt/response pairs (the built-in toy
    /// corpus by default); writes the model in HF layout.
    Sft(pipeline::SftArgs),
    /// Reward models: `p3o reward-model train --base DIR --data FILE --out DIR`.
    #[command(subcommand)]
    RewardModel(pipeline::RewardModelCommand),
    /// Held-out KL to a reference and mean rewards of policies (JSON Lines,
    /// one per policy).
    Eval(pipeline::EvalArgs),
    /// Head-to-head win rates between policies under a reward, with
    /// standard errors (one JSON object).
    Compare(pipeline::EvalArgs),
    /// The whole pipeline on the built-in toy task: SFT, preferences, reward
    /// model, P3O-V1/V2, PPO and DPO, report with plots.
    Demo(pipeline::DemoArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// A readable trajectory table and summary.
    Table,
    /// One JSON object per algorithm and step, then one summary object per
    /// algorithm.
    Jsonl,
}

#[derive(clap::Args)]
struct BanditArgs {
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
    /// Table rows every this many steps.
    #[arg(long, default_value_t = 5)]
    print_every: usize,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    // libtorch's large CPU tensors: reuse freed pages (see the module).
    #[cfg(feature = "torch")]
    p3o::torch::memory::keep_freed_memory();
    let result = match cli.command {
        Command::Reference => reference(),
        Command::Bandit(args) => bandit(args),
        Command::Logprobs(args) => lm::logprobs(args),
        Command::Generate(args) => lm::generate(args),
        Command::Reward(args) => lm::reward(args),
        Command::Train(args) => lm::train(args),
        Command::Sft(args) => pipeline::sft(args),
        Command::RewardModel(c) => pipeline::reward_model(c),
        Command::Eval(args) => pipeline::eval(args),
        Command::Compare(args) => pipeline::compare(args),
        Command::Demo(args) => pipeline::demo(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Io(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) enum Failure {
    /// Bad input: exit status 2 ([C-ERRORS]).
    Input(String),
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

/// [C-CLI-REFERENCE]: one result line per case; the first bad line stops the
/// run with its line number, after every earlier result is flushed.
fn reference() -> Result<(), Failure> {
    let stdin = io::stdin().lock();
    let mut out = BufWriter::new(io::stdout().lock());
    for (i, line) in stdin.lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                out.flush()?;
                return Err(Failure::Input(format!(
                    "line {}: input is not valid UTF-8",
                    i + 1
                )));
            }
            Err(e) => return Err(e.into()),
        };
        if line.trim().is_empty() {
            continue;
        }
        match run_line(&line) {
            Ok(result) => {
                serde_json::to_writer(&mut out, &result).map_err(io::Error::from)?;
                out.write_all(b"\n")?;
            }
            Err(e) => {
                out.flush()?;
                return Err(Failure::Input(format!("line {}: {e}", i + 1)));
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn bandit(args: BanditArgs) -> Result<(), Failure> {
    let cfg = BanditConfig {
        contexts: args.contexts as usize,
        actions: args.actions as usize,
        steps: args.steps,
        pairs: args.pairs as usize,
        epochs: args.epochs,
        lr: args.lr,
        beta: args.beta,
        dpo_beta: args.dpo_beta,
        epsilon: args.epsilon,
        vf_coef: args.vf_coef,
        seed: args.seed,
    };
    let runs = run_all(&cfg, args.reward_shift);
    let mut out = BufWriter::new(io::stdout().lock());
    match args.format {
        Format::Table => {
            writeln!(out, "{}", trajectory_table(&runs, args.print_every))?;
            write!(out, "{}", summary_table(&runs))?;
        }
        Format::Jsonl => {
            for run in &runs {
                for (label, traj) in [("r", Some(&run.plain)), ("r+delta", run.shifted.as_ref())] {
                    for m in traj.into_iter().flatten() {
                        let line = serde_json::json!({
                            "algorithm": run.algorithm.name(), "rewards": label,
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
