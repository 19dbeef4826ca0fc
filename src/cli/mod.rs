//! The `p3o` command line: one module per command group, the binary's own
//! error type ([`error::CliError`]: one line, exit status 2 for bad input
//! and 1 for failures at run time), and the one place that answers a
//! command of a feature this build lacks ([`run`]).

mod bandit;
mod demo;
mod error;
mod eval;
mod lm;
mod lora;
mod output;
mod reference;
mod reward_model;
mod sft;
mod sweep;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use error::CliError;

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
    Bandit(bandit::BanditArgs),
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
    Train(train::TrainArgs),
    /// Supervised fine-tuning on prompt/response pairs (the built-in toy
    /// corpus by default); writes the model in HF layout.
    Sft(sft::SftArgs),
    /// Reward models: `p3o reward-model train --base DIR --data FILE --out DIR`.
    #[command(subcommand)]
    RewardModel(reward_model::RewardModelCommand),
    /// LoRA adapters: `p3o lora merge --adapter DIR --out DIR [--base DIR]`.
    #[command(subcommand)]
    Lora(lora::LoraCommand),
    /// Held-out KL to a reference and mean rewards of policies (JSON Lines,
    /// one per policy).
    Eval(eval::EvalArgs),
    /// Head-to-head win rates between policies under a reward, with
    /// standard errors (one JSON object).
    Compare(eval::EvalArgs),
    /// The whole pipeline on the built-in toy task: SFT, preferences, reward
    /// model, P3O-V1/V2, PPO and DPO, report with plots.
    Demo(demo::DemoArgs),
    /// Every arm of the toy pipeline over seeds and KL coefficients,
    /// resumable, with confidence intervals, paired differences and figures.
    Sweep(sweep::SweepArgs),
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    std::panic::set_hook(Box::new(report_panic));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // A bad flag: clap's first line (which names it), exit status 2.
        Err(e) => {
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("error: bad arguments");
            eprintln!("{line} (see --help)");
            return ExitCode::from(2);
        }
    };
    // libtorch's large CPU tensors: reuse freed pages (see the module).
    #[cfg(feature = "torch")]
    p3o::torch::memory::keep_freed_memory();
    match run(cli.command) {
        Ok(()) => {
            output::keep_claimed();
            ExitCode::SUCCESS
        }
        Err(e) => {
            output::release_half_made();
            e.report()
        }
    }
}

/// The last line of defence: a panic that remains (a bug) is reported as
/// one line, a half-made run directory is removed
/// ([`output::release_half_made`]), and the process exits with status 101.
fn report_panic(info: &std::panic::PanicHookInfo) {
    let payload = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_default();
    let first = payload.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let at = info
        .location()
        .map(|l| format!(" at {}:{}", l.file(), l.line()))
        .unwrap_or_default();
    eprintln!("error: internal error (a bug in p3o, please report it){at}: {first}");
    output::release_half_made();
}

/// Runs one command; those of the language-model stack answer
/// [`CliError::Unbuilt`] in a build without feature `torch`.
fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Reference => reference::run(),
        Command::Bandit(a) => bandit::run(a),
        #[cfg(feature = "torch")]
        Command::Logprobs(a) => lm::logprobs(a),
        #[cfg(feature = "torch")]
        Command::Generate(a) => lm::generate(a),
        #[cfg(feature = "torch")]
        Command::Reward(a) => lm::reward(a),
        #[cfg(feature = "torch")]
        Command::Train(a) => train::run(a),
        #[cfg(feature = "torch")]
        Command::Sft(a) => sft::run(a),
        #[cfg(feature = "torch")]
        Command::RewardModel(c) => reward_model::run(c),
        #[cfg(feature = "torch")]
        Command::Lora(c) => lora::run(c),
        #[cfg(feature = "torch")]
        Command::Eval(a) => eval::eval(a),
        #[cfg(feature = "torch")]
        Command::Compare(a) => eval::compare(a),
        #[cfg(feature = "torch")]
        Command::Demo(a) => demo::run(a),
        #[cfg(feature = "torch")]
        Command::Sweep(a) => sweep::run(a),
        #[cfg(not(feature = "torch"))]
        _ => Err(CliError::Unbuilt("torch")),
    }
}
