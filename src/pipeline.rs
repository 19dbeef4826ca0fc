//! `p3o sft`, `p3o reward-model train`, `p3o eval`, `p3o compare` and
//! `p3o demo`: the toy pipeline's commands (feature `torch`).

use std::path::PathBuf;

use crate::Failure;

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

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A policy to evaluate: an HF directory, or NAME=DIR (repeatable).
    #[arg(long = "policy", required = true)]
    policies: Vec<String>,
    /// The reference (SFT) policy the KL is measured against.
    #[arg(long)]
    reference: PathBuf,
    /// The reward: an HF reward-model directory or a built-in
    /// (builtin:toy-gold, builtin:vowels).
    #[arg(long)]
    reward: String,
    /// A second reward reported beside the first (e.g. builtin:toy-gold).
    #[arg(long)]
    gold_reward: Option<String>,
    /// Held-out prompts: builtin:toy, builtin or a JSON Lines file.
    #[arg(long, default_value = "builtin:toy")]
    prompts: String,
    /// Responses sampled per prompt.
    #[arg(long, default_value_t = 4)]
    samples: usize,
    #[arg(long, default_value_t = 24)]
    max_new_tokens: i64,
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Seed of the sampler (the same for every policy).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
}

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

#[cfg(not(feature = "torch"))]
mod imp {
    use super::*;
    use crate::lm::unavailable;

    pub fn sft(_: SftArgs) -> Result<(), Failure> {
        unavailable()
    }

    pub fn reward_model(_: RewardModelCommand) -> Result<(), Failure> {
        unavailable()
    }

    pub fn eval(_: EvalArgs) -> Result<(), Failure> {
        unavailable()
    }

    pub fn compare(_: EvalArgs) -> Result<(), Failure> {
        unavailable()
    }

    pub fn demo(_: DemoArgs) -> Result<(), Failure> {
        unavailable()
    }
}

#[cfg(feature = "torch")]
mod imp {
    use super::*;
    use p3o::demo::{DemoConfig, run_demo};
    use p3o::train::evaluate::{
        Judges, PolicyEval, SampleSpec, compare as win_rates, eval_prompts, evaluate_policy,
        load_policy,
    };
    use p3o::train::models::device_of;
    use p3o::train::reward_model::{RewardModelConfig, train_reward_model};
    use p3o::train::rollout::Reward;
    use p3o::train::sft::{SftConfig, run_sft};
    use p3o::train::trainer::TrainError;
    use std::io;
    use std::path::Path;

    /// A trainer error as the CLI reports it: bad input exits 2.
    pub fn failure(e: TrainError) -> Failure {
        match e {
            TrainError::Input(m) => Failure::Input(m),
            TrainError::Torch(t) => Failure::Input(t.to_string()),
            TrainError::Stopped(m) => Failure::Io(io::Error::other(m)),
            TrainError::Io(e) => Failure::Io(e),
        }
    }

    fn config_failure(e: impl std::fmt::Display) -> Failure {
        Failure::Input(e.to_string())
    }

    /// Refuses an output directory that already holds a run of `what`, so
    /// that nothing is overwritten.
    fn fresh_output(out: &Path, marker: &str, what: &str) -> Result<(), Failure> {
        if out.join(marker).exists() {
            return Err(Failure::Input(format!(
                "{} already holds a {what} ({marker}); choose another --out or remove it",
                out.display()
            )));
        }
        Ok(())
    }

    fn print_json(v: &impl serde::Serialize) {
        println!("{}", serde_json::to_string(v).expect("JSON"));
    }

    pub fn sft(a: SftArgs) -> Result<(), Failure> {
        let cfg = SftConfig::load(a.config.as_deref(), &a.set).map_err(config_failure)?;
        fresh_output(&a.out, "metrics.jsonl", "run")?;
        let summary = run_sft(&cfg, &a.out).map_err(failure)?;
        print_json(&summary);
        Ok(())
    }

    pub fn reward_model(c: RewardModelCommand) -> Result<(), Failure> {
        let RewardModelCommand::Train(a) = c;
        let mut sets = a.set.clone();
        if let Some(b) = &a.base {
            sets.push(format!("base = {b:?}"));
        }
        if let Some(d) = &a.data {
            sets.push(format!("data = {d:?}"));
        }
        let cfg = RewardModelConfig::load(a.config.as_deref(), &sets).map_err(config_failure)?;
        fresh_output(&a.out, "metrics.jsonl", "run")?;
        let summary = train_reward_model(&cfg, &a.out).map_err(failure)?;
        print_json(&summary);
        Ok(())
    }

    /// Loads the judges and evaluates every policy of `a`.
    fn evaluate_all(a: &EvalArgs) -> Result<Vec<PolicyEval>, Failure> {
        if a.samples == 0 {
            return Err(Failure::Input("--samples must be at least 1".into()));
        }
        if a.max_new_tokens < 1 {
            return Err(Failure::Input("--max-new-tokens must be at least 1".into()));
        }
        let device = device_of(&a.device).map_err(failure)?;
        let reference = load_policy(&a.reference, device).map_err(failure)?;
        let tokenizer = p3o::torch::tokenizer::Tokenizer::load(&a.reference, &reference.config)
            .map_err(|e| Failure::Input(e.to_string()))?;
        let judges = Judges {
            reference,
            reward: Reward::load(&a.reward, "--reward", a.max_new_tokens, device)
                .map_err(failure)?,
            gold: match &a.gold_reward {
                Some(g) => Some(
                    Reward::load(g, "--gold-reward", a.max_new_tokens, device).map_err(failure)?,
                ),
                None => None,
            },
            tokenizer,
        };
        let prompts = eval_prompts(&a.prompts).map_err(failure)?;
        let spec = SampleSpec {
            max_new_tokens: a.max_new_tokens,
            temperature: a.temperature,
            samples: a.samples,
            seed: a.seed,
            batch_size: 256,
        };
        a.policies
            .iter()
            .map(|p| {
                let (name, dir) = p.split_once('=').unwrap_or((p.as_str(), p.as_str()));
                let policy = load_policy(Path::new(dir), device).map_err(failure)?;
                evaluate_policy(name, &policy, &judges, &prompts, &spec).map_err(failure)
            })
            .collect()
    }

    pub fn eval(a: EvalArgs) -> Result<(), Failure> {
        for e in evaluate_all(&a)? {
            print_json(&e);
        }
        Ok(())
    }

    pub fn compare(a: EvalArgs) -> Result<(), Failure> {
        let evals = evaluate_all(&a)?;
        print_json(&win_rates(&evals));
        Ok(())
    }

    pub fn demo(a: DemoArgs) -> Result<(), Failure> {
        let cfg = DemoConfig::load(a.quick, a.config.as_deref(), &a.set).map_err(config_failure)?;
        if std::fs::read_dir(&a.out).is_ok_and(|mut d| d.next().is_some()) {
            return Err(Failure::Input(format!(
                "{} exists and is not empty; choose another --out or remove it",
                a.out.display()
            )));
        }
        let results = run_demo(&cfg, &a.out).map_err(failure)?;
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
}

#[cfg(feature = "torch")]
pub use imp::failure;
pub use imp::{compare, demo, eval, reward_model, sft};
