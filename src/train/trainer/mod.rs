//! The training loop of `p3o train`: rollouts (a group of
//! `responses_per_prompt` responses per prompt for the group and pair
//! algorithms, one for PPO), KL-shaped float64 rewards, epochs of
//! minibatch updates with AdamW, metrics, evaluations and checkpoints.
//!
//! One file per job: `setup` (models, prompts, optimizer), `rollout`
//! (sampling and scoring a step's responses), `group_update` (P3O-V1,
//! P3O-V2, DPO, RLOO, GRPO, p3o-trlx), `ppo_update` ([C-PPO-TOKEN]), `update` (backward, gradient
//! accumulation, the optimizer step and the non-finite guard),
//! `checkpoint` (writing and resuming), and the typed records `metrics`
//! and `state`.

mod checkpoint;
mod group_update;
pub mod metrics;
mod ppo_update;
mod rollout;
mod setup;
pub mod state;
pub use state::{RESUMABLE_CHANGES, Resumed};
mod update;

use std::io::Write;
use std::path::PathBuf;

use tch::{Device, Kind, Tensor};

use super::collective::Collective;
use super::config::TrainConfig;
use super::error::TrainError;
use super::kernels::{Kernels, TokenRows};
use super::models::progress_bar;
use super::optim::AdamW;
use super::scoring::{Reward, ValueHead, sequence_logprobs_with};
use super::seed::SeedPurpose;
use crate::reference::shift::{RewardScale, RewardShift};
use crate::run_dir::io_at;
use crate::torch::LanguageModel;
use crate::torch::generate::{GenerateOptions, Generation, generate};
use crate::torch::tokenizer::Tokenizer;
use metrics::{EvalMetrics, MetricsLine, Split};

/// Everything a run holds.
pub struct Trainer {
    cfg: TrainConfig,
    out: PathBuf,
    policy: LanguageModel,
    reference: Reference,
    /// What a LoRA run's `adapter_config.json` names as its base model.
    lora_base: String,
    reward: Reward,
    /// A second reward reported in eval lines (`gold_reward_mean`).
    gold: Option<Reward>,
    tokenizer: Tokenizer,
    tokenizer_files: crate::train::models::TokenizerFiles,
    prompts: Vec<String>,
    eval_prompts: Vec<String>,
    shift: Option<RewardShift>,
    /// `c(prompt)` under `--reward-scale`, applied before the shift.
    scale: Option<RewardScale>,
    opt: AdamW,
    /// Where the training forward's token log-probs come from.
    kernels: Kernels,
    /// How the run's processes share prompts and gradients.
    collective: Box<dyn Collective>,
    /// PPO's value head on the policy's hidden states (weights `v_head.*`,
    /// zero at the start).
    value_head: Option<ValueHead>,
    /// Running (count, mean, M2) of scores, for PPO's `reward_scaling`.
    score_stats: [f64; 3],
    /// Steps completed.
    step: usize,
    nonfinite_in_row: usize,
    nonfinite_total: usize,
}

/// The reference policy: a model of its own, or, in a LoRA run without
/// config key `reference`, the policy's base (its adapters off, [C-LORA]).
enum Reference {
    Model(LanguageModel),
    PolicyBase,
}

/// `log pi(y|x)` per response: the sum of its token log-probs.
fn sequence_sums(token_logprobs: &[Vec<f32>]) -> Vec<f32> {
    token_logprobs.iter().map(|t| t.iter().sum()).collect()
}

/// Token log-probs laid out as a response window `[n][l]`: each response's
/// tokens in its last columns, zeros before.
pub(super) fn right_aligned(token_logprobs: &[Vec<f32>], l: usize) -> TokenRows {
    token_logprobs
        .iter()
        .map(|t| {
            let mut row = vec![0.0; l - t.len()];
            row.extend(t.iter().map(|&x| f64::from(x)));
            row
        })
        .collect()
}

/// A `[n, l]` tensor on `device` of rows `pick` of `rows`, in float32.
pub(super) fn rows_tensor(rows: &TokenRows, pick: &[usize], device: Device) -> Tensor {
    let l = rows.first().map_or(0, Vec::len);
    let flat: Vec<f32> = pick
        .iter()
        .flat_map(|&i| rows[i].iter().map(|&x| x as f32))
        .collect();
    Tensor::from_slice(&flat)
        .view([pick.len() as i64, l as i64])
        .to_device(device)
}

impl Trainer {
    /// Trains on `c(prompt) r` (before any shift) with `c` drawn by
    /// `scale` ([C-REWARD-SCALE]).
    pub fn with_reward_scale(mut self, scale: Option<RewardScale>) -> Trainer {
        self.scale = scale;
        self
    }

    /// Runs to `cfg.steps`, appending metrics to `DIR/metrics.jsonl`,
    /// writing checkpoints and finally `DIR/final`. Returns the last step's
    /// line (none when a resumed run had no step left).
    pub fn run(&mut self) -> Result<Option<MetricsLine>, TrainError> {
        std::fs::create_dir_all(&self.out).map_err(io_at(&self.out))?;
        let metrics_path = self.out.join("metrics.jsonl");
        let at = io_at(&metrics_path);
        let mut metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(&at)?;
        let total_opt_steps = self.total_optimizer_steps();
        let bar = progress_bar(self.cfg.steps as u64, "steps");
        bar.set_position(self.step as u64);
        let mut last = None;
        if self.step == 0 && self.cfg.eval_every > 0 {
            // The starting point of the KL-reward curve.
            writeln!(metrics, "{}", self.evaluate()?.to_json()).map_err(&at)?;
        }
        while self.step < self.cfg.steps {
            let line = self.train_step(total_opt_steps)?;
            writeln!(metrics, "{}", line.to_json()).map_err(&at)?;
            if let MetricsLine::Step(m) = &line {
                bar.set_message(format!("reward {:.3} kl {:.3}", m.reward_mean, m.kl_mean));
            }
            bar.inc(1);
            if self.cfg.eval_every > 0 && self.step.is_multiple_of(self.cfg.eval_every) {
                writeln!(metrics, "{}", self.evaluate()?.to_json()).map_err(&at)?;
            }
            if self.cfg.checkpoint_every > 0 && self.step.is_multiple_of(self.cfg.checkpoint_every)
            {
                metrics.flush().map_err(&at)?;
                self.save_checkpoint()?;
            }
            last = Some(line);
        }
        bar.finish_and_clear();
        metrics.flush().map_err(&at)?;
        crate::run_dir::replace_dir(&self.out.join("final"), |d| self.save_model(d))?;
        Ok(last)
    }

    /// Optimizer steps of the whole run (the schedule's length).
    fn total_optimizer_steps(&self) -> usize {
        let minibatches = self.cfg.batch_size.div_ceil(self.cfg.minibatch_size);
        // Accumulation runs on across epochs and is flushed at the end of
        // each step (`finish_updates`).
        (self.cfg.epochs * minibatches).div_ceil(self.cfg.grad_accum) * self.cfg.steps
    }

    /// One step: a rollout, then epochs of minibatch updates.
    fn train_step(&mut self, total_opt_steps: usize) -> Result<MetricsLine, TrainError> {
        if self.value_head.is_some() {
            self.ppo_step(total_opt_steps)
        } else {
            self.group_step(total_opt_steps)
        }
    }

    /// Responses to `prompt_ids` with the log-probs of their tokens under
    /// the policy that sampled them (the behaviour policy of the step).
    fn sample(&self, prompt_ids: &[Vec<i64>], seed: u64) -> Result<Generation, TrainError> {
        let o = GenerateOptions {
            max_new_tokens: self.cfg.max_new_tokens,
            temperature: self.cfg.temperature,
            top_k: self.cfg.top_k,
            top_p: self.cfg.top_p,
            seed,
            eos_token_ids: self.tokenizer.eos_token_ids.clone(),
            pad_token_id: self.tokenizer.pad_token_id.unwrap_or(0),
            use_cache: true,
            logprobs: true,
        };
        Ok(generate(&self.policy, prompt_ids, &o)?)
    }

    /// Mean reward (unshifted) and sequence KL to the reference on the eval
    /// prompts, `eval_samples` sampled responses each with a fixed seed.
    fn evaluate(&self) -> Result<MetricsLine, TrainError> {
        let mut ids: Vec<Vec<i64>> = Vec::new();
        for p in &self.eval_prompts {
            let p = self.tokenizer.encode(p)?;
            ids.extend(std::iter::repeat_n(p, self.cfg.eval_samples));
        }
        let sampled = self.sample(&ids, SeedPurpose::Evaluation.of(self.cfg.seed))?;
        let responses = sampled.response_ids;
        let lp = Tensor::from_slice(&sequence_sums(&sampled.token_logprobs));
        let lp_ref =
            self.with_reference(|r| sequence_logprobs_with(r, &ids, &responses, &self.kernels))?;
        let kl = (lp.to_kind(Kind::Double) - lp_ref.to_device(Device::Cpu).to_kind(Kind::Double))
            .mean(Kind::Double)
            .double_value(&[]);
        let mean = |r: Vec<f64>| r.iter().sum::<f64>() / r.len() as f64;
        let reward_mean = mean(self.reward.score(&self.tokenizer, &ids, &responses)?);
        let gold_reward_mean = match &self.gold {
            Some(g) => Some(mean(g.score(&self.tokenizer, &ids, &responses)?)),
            None => None,
        };
        Ok(MetricsLine::Eval(EvalMetrics {
            step: self.step,
            algorithm: self.cfg.algorithm,
            split: Split::Eval,
            reward_mean,
            kl_mean: kl,
            gold_reward_mean,
        }))
    }

    /// The policy in HF layout, or in a LoRA run its adapters in PEFT's;
    /// with the tokenizer files.
    fn save_model(&self, dir: &std::path::Path) -> Result<(), TrainError> {
        if self.policy.lora.spec().is_some() {
            self.policy.save_adapters(dir, &self.lora_base)?;
        } else {
            self.policy.save(dir)?;
        }
        self.tokenizer_files.write(dir)
    }

    /// Runs `f` on the reference policy.
    fn with_reference<T>(
        &self,
        f: impl FnOnce(&LanguageModel) -> Result<T, TrainError>,
    ) -> Result<T, TrainError> {
        match &self.reference {
            Reference::Model(m) => f(m),
            Reference::PolicyBase => {
                let _base = self.policy.lora.switched_off();
                f(&self.policy)
            }
        }
    }
}

/// What tests and benchmarks reach into (feature `testing`).
#[cfg(feature = "testing")]
impl Trainer {
    /// Runs one training step outside [`Self::run`] and returns its line.
    pub fn step_once(&mut self) -> Result<MetricsLine, TrainError> {
        let total = self.total_optimizer_steps();
        self.train_step(total)
    }

    /// The policy's parameters, by name.
    pub fn policy_weights(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.policy.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The optimizer (its float32 master copies under `dtype = bf16`).
    pub fn optimizer(&self) -> &AdamW {
        &self.opt
    }
}
