//! `p3o eval` and `p3o compare`: held-out KL and rewards of policies, and
//! their win rates ([C-WINRATE]; feature `torch`).
#![cfg_attr(not(feature = "torch"), allow(dead_code))]

use std::path::PathBuf;

use p3o::device::DeviceSpec;

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
    device: DeviceSpec,
}

#[cfg(feature = "torch")]
pub use imp::{compare, eval};

#[cfg(feature = "torch")]
mod imp {
    use std::path::Path;

    use p3o::torch::chat::{ChatTemplate, TemplateChoice};
    use p3o::torch::generate::{MAX_NEW_TOKENS, temperature_problem};
    use p3o::torch::tokenizer::Tokenizer;
    use p3o::train::evaluate::{
        Judges, PolicyEval, SampleSpec, compare as win_rates, eval_prompts, evaluate_policy,
        load_policy,
    };
    use p3o::train::models::{check_shared_vocabulary, device_of};
    use p3o::train::scoring::Reward;

    use super::EvalArgs;
    use crate::cli::error::CliError;
    use crate::cli::output::print_json;

    /// Loads the judges and evaluates every policy of `a`.
    fn evaluate_all(a: &EvalArgs) -> Result<Vec<PolicyEval>, CliError> {
        if !(1..=MAX_SAMPLES).contains(&a.samples) {
            return Err(CliError::Input(format!(
                "--samples: {} must be in 1..={MAX_SAMPLES}",
                a.samples
            )));
        }
        if !(1..=MAX_NEW_TOKENS).contains(&a.max_new_tokens) {
            return Err(CliError::Input(format!(
                "--max-new-tokens: {} must be in 1..={MAX_NEW_TOKENS}",
                a.max_new_tokens
            )));
        }
        if let Some(why) = temperature_problem(a.temperature) {
            return Err(CliError::Input(format!("--temperature: {why}")));
        }
        policy_names(&a.policies)?;
        let device = device_of(a.device, "--device")?;
        let reference = load_policy(&a.reference, device)?;
        let tokenizer = Tokenizer::load(&a.reference, &reference.config)
            .map_err(|e| CliError::Input(e.to_string()))?;
        let judges = Judges {
            reference,
            reward: Reward::load(&a.reward, "--reward", a.max_new_tokens, device)?,
            gold: match &a.gold_reward {
                Some(g) => Some(Reward::load(g, "--gold-reward", a.max_new_tokens, device)?),
                None => None,
            },
            tokenizer,
        };
        // Conversations take the reference tokenizer's own chat template.
        let chat = ChatTemplate::choose(&TemplateChoice::Auto, &judges.tokenizer.tokenizer_config)
            .map_err(|e| CliError::Input(e.to_string()))?;
        let prompts = eval_prompts(&a.prompts, chat.as_ref())?;
        // Every model that reads a prompt and its response must hold the
        // longest of them.
        let mut longest = 0i64;
        for p in &prompts {
            longest = longest.max(judges.tokenizer.encode(p)?.len() as i64);
        }
        let needed = longest + a.max_new_tokens;
        let fits = |what: &str, m: &p3o::torch::LanguageModel| -> Result<(), CliError> {
            let max = m.config.max_positions();
            if needed > max {
                return Err(CliError::Input(format!(
                    "{what}: the longest prompt ({longest} tokens) + --max-new-tokens {} need {needed} positions; the model has {max}",
                    a.max_new_tokens
                )));
            }
            Ok(())
        };
        fits(
            &format!("--reference {}", a.reference.display()),
            &judges.reference,
        )?;
        for (flag, r) in [
            ("--reward", Some(&judges.reward)),
            ("--gold-reward", judges.gold.as_ref()),
        ] {
            if let Some(Reward::Model(m)) = r {
                fits(flag, m)?;
            }
        }
        let spec = SampleSpec {
            max_new_tokens: a.max_new_tokens,
            temperature: a.temperature,
            samples: a.samples,
            seed: a.seed,
            batch_size: 256,
        };
        let named = policy_names(&a.policies)?;
        for (key, spec, r) in [
            ("--reward", a.reward.as_str(), Some(&judges.reward)),
            (
                "--gold-reward",
                a.gold_reward.as_deref().unwrap_or(""),
                judges.gold.as_ref(),
            ),
        ] {
            if let Some(Reward::Model(m)) = r {
                check_shared_vocabulary(
                    key,
                    spec,
                    m,
                    &owner(a),
                    &judges.reference,
                    &judges.tokenizer,
                )?;
            }
        }
        named
            .iter()
            .map(|(name, dir)| {
                let policy = load_policy(Path::new(dir), device)?;
                fits(&format!("--policy {name}"), &policy)?;
                check_shared_vocabulary(
                    &format!("--policy {name}"),
                    dir,
                    &policy,
                    &owner(a),
                    &judges.reference,
                    &judges.tokenizer,
                )?;
                Ok(evaluate_policy(name, &policy, &judges, &prompts, &spec)?)
            })
            .collect()
    }

    /// The most responses `--samples` may ask for per prompt.
    const MAX_SAMPLES: usize = 1 << 14;

    fn owner(a: &EvalArgs) -> String {
        format!("the reference `{}`", a.reference.display())
    }

    /// `NAME=DIR` or `DIR` (named by itself) for each `--policy`; an empty
    /// name or directory, or a name given twice, is refused.
    fn policy_names(policies: &[String]) -> Result<Vec<(String, String)>, CliError> {
        let mut out: Vec<(String, String)> = Vec::new();
        for p in policies {
            // A path may hold `=` (runs/lr=1e-3/final): a NAME has no `/`.
            let (name, dir) = p
                .split_once('=')
                .filter(|(name, _)| !name.contains('/'))
                .unwrap_or((p.as_str(), p.as_str()));
            let (name, dir) = (name.trim(), dir.trim());
            if name.is_empty() || dir.is_empty() {
                return Err(CliError::Input(format!(
                    "--policy `{p}`: expected DIR or NAME=DIR with neither part empty"
                )));
            }
            if out.iter().any(|(n, _)| n == name) {
                return Err(CliError::Input(format!(
                    "--policy `{p}`: the name `{name}` is given twice; name each policy once (NAME=DIR)"
                )));
            }
            out.push((name.to_string(), dir.to_string()));
        }
        Ok(out)
    }

    /// One JSON line per policy.
    pub fn eval(a: EvalArgs) -> Result<(), CliError> {
        for e in evaluate_all(&a)? {
            print_json(&e)?;
        }
        Ok(())
    }

    /// The win-rate matrix as one JSON object.
    pub fn compare(a: EvalArgs) -> Result<(), CliError> {
        let evals = evaluate_all(&a)?;
        print_json(&win_rates(&evals))
    }
}
