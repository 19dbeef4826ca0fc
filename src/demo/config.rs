//! The configuration of `p3o demo`: every stage's keys, with the full
//! run's defaults and the `--quick` ones.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::arm::DemoArm;
use crate::device::DeviceSpec;
use crate::reference::shift::RewardShift;
use crate::train::builtin::{TOY_GOLD_REWARD, TOY_PROMPTS};
use crate::train::config::MAX_COUNT;
use crate::train::config::{Algorithm, TrainConfig, check_device, load_toml_over};
use crate::train::error::ConfigError;
use crate::train::reward_model::RewardModelConfig;
use crate::train::sft::SftConfig;

/// Every key of the demo, with its default (the full run); `--quick` starts
/// from [`DemoConfig::quick`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    pub seed: u64,
    /// CPU threads of libtorch.
    pub threads: usize,
    /// The device of every stage.
    pub device: DeviceSpec,
    /// Supervised examples, SFT steps and batch.
    pub corpus_size: usize,
    pub sft_steps: usize,
    pub sft_batch_size: usize,
    pub sft_lr: f64,
    /// Preference pairs sampled from the SFT policy (one per prompt).
    pub preference_pairs: usize,
    pub rm_epochs: usize,
    pub rm_lr: f64,
    /// Arms of the RL stage: an algorithm, with `-gG` for G responses per
    /// prompt ([`DemoArm`]). Every arm samples `2 * rl_batch_size` responses
    /// per step: one with groups of G takes `2 * rl_batch_size / G` prompts.
    pub algorithms: Vec<DemoArm>,
    pub rl_steps: usize,
    pub rl_batch_size: usize,
    pub rl_epochs: usize,
    pub rl_minibatch_size: usize,
    pub rl_lr: f64,
    /// KL coefficient of P3O and PPO.
    pub beta: f64,
    /// DPO's beta.
    pub dpo_beta: f64,
    #[serde(with = "crate::train::config::non_finite")]
    pub epsilon: f64,
    pub max_new_tokens: i64,
    /// Frontier points every this many RL steps.
    pub eval_every: usize,
    /// The reward shift of the invariance experiment (`const:C` or
    /// `random:A[:SEED]`; empty skips it).
    pub reward_shift: String,
    /// Samples per held-out prompt at each frontier point and in the final
    /// evaluation.
    pub eval_samples: usize,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            seed: 0,
            threads: 2,
            device: DeviceSpec::Cpu,
            corpus_size: 8192,
            sft_steps: 600,
            sft_batch_size: 64,
            sft_lr: 3e-3,
            // 0.798 held-out accuracy at seed 0 (16384 pairs: 0.63 with
            // 2 epochs at 2e-3, 0.745 at most with 8 to 16 at 5e-4; 32768
            // pairs, 6 epochs: 0.773). README, "p3o demo".
            preference_pairs: 65536,
            rm_epochs: 4,
            rm_lr: 5e-4,
            algorithms: vec![
                DemoArm::pairs(Algorithm::P3oV1),
                DemoArm::pairs(Algorithm::P3oV2),
                DemoArm::groups(Algorithm::P3oV2, 4),
                DemoArm::pairs(Algorithm::Ppo),
                DemoArm::pairs(Algorithm::Dpo),
                DemoArm::groups(Algorithm::Rloo, 4),
                DemoArm::groups(Algorithm::Grpo, 4),
            ],
            rl_steps: 200,
            rl_batch_size: 16,
            rl_epochs: 2,
            rl_minibatch_size: 8,
            rl_lr: 5e-4,
            beta: 0.05,
            dpo_beta: 0.1,
            epsilon: 0.2,
            max_new_tokens: 24,
            eval_every: 10,
            reward_shift: "random:10:1".into(),
            eval_samples: 4,
        }
    }
}

impl DemoConfig {
    /// The `--quick` defaults: the same pipeline, smaller.
    pub fn quick() -> DemoConfig {
        DemoConfig {
            corpus_size: 4096,
            sft_steps: 200,
            preference_pairs: 4096,
            rm_epochs: 2,
            rm_lr: 2e-3,
            rl_steps: 40,
            eval_every: 10,
            eval_samples: 1,
            ..DemoConfig::default()
        }
    }

    /// The defaults (full or quick) under a TOML file under `--set`s.
    pub fn load(
        quick: bool,
        file: Option<&Path>,
        sets: &[String],
    ) -> Result<DemoConfig, ConfigError> {
        let base = if quick {
            DemoConfig::quick()
        } else {
            DemoConfig::default()
        };
        DemoConfig::load_over(&base, file, sets)
    }

    /// `base` under a TOML file under `--set`s, checked.
    pub fn load_over(
        base: &DemoConfig,
        file: Option<&Path>,
        sets: &[String],
    ) -> Result<DemoConfig, ConfigError> {
        let table = toml::Table::try_from(base).expect("the config serialises");
        let cfg: DemoConfig = load_toml_over(table, file, sets)?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Every key's range, and every stage's and arm's own checks.
    pub fn check(&self) -> Result<(), ConfigError> {
        let cfg = self;
        if cfg.algorithms.is_empty() {
            return Err(ConfigError(
                "config key `algorithms`: name at least one".into(),
            ));
        }
        if let Some(dup) = cfg
            .algorithms
            .iter()
            .enumerate()
            .find(|(i, a)| cfg.algorithms[..*i].contains(a))
        {
            return Err(ConfigError(format!(
                "config key `algorithms`: `{}` is named twice",
                dup.1
            )));
        }
        for (key, v) in [
            ("corpus_size", cfg.corpus_size),
            ("sft_steps", cfg.sft_steps),
            ("sft_batch_size", cfg.sft_batch_size),
            ("preference_pairs", cfg.preference_pairs),
            ("rm_epochs", cfg.rm_epochs),
            ("rl_steps", cfg.rl_steps),
            ("eval_samples", cfg.eval_samples),
        ] {
            if v == 0 {
                return Err(ConfigError(format!(
                    "config key `{key}`: must be at least 1"
                )));
            }
            if v > MAX_COUNT {
                return Err(ConfigError(format!(
                    "config key `{key}`: {v} is above the limit of {MAX_COUNT}"
                )));
            }
        }
        for (key, v) in [("sft_lr", cfg.sft_lr), ("rm_lr", cfg.rm_lr)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError(format!(
                    "config key `{key}`: {v} must be finite and positive"
                )));
            }
        }
        // Every stage's own checks, with the demo's key names.
        let stage = |what: &str, e: ConfigError| ConfigError(format!("{} (the {what} stage)", e.0));
        cfg.sft_config().check().map_err(|e| stage("SFT", e))?;
        cfg.reward_model_config(Path::new("sft"), Path::new("prefs"))
            .check()
            .map_err(|e| stage("reward-model", e))?;
        let positions = crate::train::builtin::config_json()["max_position_embeddings"]
            .as_i64()
            .unwrap_or(0);
        if cfg.max_new_tokens >= positions {
            return Err(ConfigError(format!(
                "config key `max_new_tokens`: {} does not fit the built-in model's {positions} positions with a prompt",
                cfg.max_new_tokens
            )));
        }
        if !cfg.reward_shift.is_empty() {
            cfg.reward_shift
                .parse::<RewardShift>()
                .map_err(|e| ConfigError(format!("config key `reward_shift`: {e}")))?;
        }
        check_device(cfg.device)?;
        // Every RL config must be valid before anything runs.
        for &arm in &cfg.algorithms {
            cfg.train_config(arm, Path::new("policy"), Path::new("reward"))
                .map_err(|e| ConfigError(format!("{} (arm `{arm}`)", e.0)))?;
        }
        Ok(())
    }

    pub fn sft_config(&self) -> SftConfig {
        SftConfig {
            corpus_size: self.corpus_size,
            steps: self.sft_steps,
            batch_size: self.sft_batch_size,
            lr: self.sft_lr,
            seed: self.seed,
            threads: self.threads,
            device: self.device,
            ..SftConfig::default()
        }
    }

    pub fn reward_model_config(&self, base: &Path, data: &Path) -> RewardModelConfig {
        RewardModelConfig {
            base: base.display().to_string(),
            data: data.display().to_string(),
            epochs: self.rm_epochs,
            lr: self.rm_lr,
            seed: self.seed,
            threads: self.threads,
            device: self.device,
            ..RewardModelConfig::default()
        }
    }

    /// The `p3o train` config of one arm's run, checked: groups of G take
    /// `2 / G` of the pair arms' prompts, so that every arm samples as many
    /// responses per step and per minibatch.
    pub fn train_config(
        &self,
        arm: DemoArm,
        policy: &Path,
        reward: &Path,
    ) -> Result<TrainConfig, ConfigError> {
        let DemoArm {
            algorithm,
            responses_per_prompt: g,
        } = arm;
        let prompts = |key: &str, pairs: usize| {
            if (2 * pairs) % g == 0 {
                Ok(2 * pairs / g)
            } else {
                Err(ConfigError(format!(
                    "config key `{key}`: the {} responses of {pairs} pairs do not split into groups of {g}",
                    2 * pairs
                )))
            }
        };
        let batch_size = prompts("rl_batch_size", self.rl_batch_size)?;
        let minibatch_size = prompts("rl_minibatch_size", self.rl_minibatch_size)?;
        let cfg = TrainConfig {
            algorithm,
            responses_per_prompt: g,
            steps: self.rl_steps,
            seed: self.seed,
            lr: self.rl_lr,
            beta: if algorithm == Algorithm::Dpo {
                self.dpo_beta
            } else {
                self.beta
            },
            epsilon: self.epsilon,
            batch_size,
            epochs: self.rl_epochs,
            minibatch_size,
            max_new_tokens: self.max_new_tokens,
            policy: policy.display().to_string(),
            reward: reward.display().to_string(),
            gold_reward: TOY_GOLD_REWARD.into(),
            prompts: TOY_PROMPTS.into(),
            eval_every: self.eval_every,
            eval_samples: self.eval_samples,
            checkpoint_every: 0,
            threads: self.threads,
            device: self.device,
            ..TrainConfig::default()
        };
        cfg.check()?;
        Ok(cfg)
    }
}
