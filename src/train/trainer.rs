//! The training loop of `p3o train` for P3O-V1, P3O-V2 and online DPO:
//! rollouts of two responses per prompt, KL-shaped float64 rewards, several
//! epochs of minibatches over each rollout, AdamW, metrics, checkpoints.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use tch::{Device, Kind, Tensor};

use super::builtin::{self, BUILTIN_PROMPTS, TOY_PROMPTS};
use super::config::TrainConfig;
use super::data::load_prompts;
use super::kernels::{Detached, Kernels, backward};
use super::losses::{PairBatch, PpoBatch, ppo_loss};
use super::models::{device_of, load_model, progress_bar, tokenizer_json_of};
use super::optim::{AdamW, learning_rate};
use super::rollout::{Reward, ValueHead, sequence_logprobs_with, token_window_with, value_window};
use crate::reference::ppo_tokens::PpoHyper;
use crate::reference::shift::RewardShift;
use crate::reference::{Algorithm, Hyper, PairConsts, PairVars};
use crate::torch::checkpoint::{load_into, read_tensors, write_tensors};
use crate::torch::generate::{GenerateOptions, Generation, generate};
use crate::torch::layers::Linear;
use crate::torch::tokenizer::Tokenizer;
use crate::torch::{Head, LanguageModel, TorchError};

/// A failure of `p3o train`: bad input (exit status 2) or a run that had to
/// stop.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Stopped(String),
    #[error(transparent)]
    Torch(#[from] TorchError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Losses and gradient norms of a step's minibatches, and how many
/// minibatches have gradients waiting.
#[derive(Default)]
struct Updates {
    losses: Vec<f64>,
    norms: Vec<f64>,
    accumulated: usize,
}

/// The algorithm-specific numbers of a step's metrics line.
struct StepStats {
    kl_mean: f64,
    /// Minus the sum of the behaviour log-probs of every response token.
    entropy_sum: f64,
    clip_fraction: f64,
    ratio_mean: f64,
    /// Step start, end of generation, end of scoring.
    times: [Instant; 3],
}

/// Everything a run holds.
pub struct Trainer {
    cfg: TrainConfig,
    out: PathBuf,
    policy: LanguageModel,
    reference: LanguageModel,
    reward: Reward,
    /// A second reward reported in eval lines (`gold_reward_mean`).
    gold: Option<Reward>,
    tokenizer: Tokenizer,
    tokenizer_json: String,
    prompts: Vec<String>,
    eval_prompts: Vec<String>,
    shift: Option<RewardShift>,
    opt: AdamW,
    /// Where the training forward's token log-probs come from.
    kernels: Kernels,
    /// PPO's value head on the policy's hidden states (weights `v_head.*`,
    /// zero at the start).
    value_head: Option<ValueHead>,
    /// Running (count, mean, M2) of scores, for PPO's `reward_scaling`.
    score_stats: (f64, f64, f64),
    /// Steps completed.
    step: usize,
    nonfinite_in_row: usize,
    nonfinite_total: usize,
}

/// Token log-probs laid out as a response window `[n][l]`: each response's
/// tokens in its last columns, zeros before.
fn right_aligned(token_logprobs: &[Vec<f32>], l: usize) -> Vec<Vec<f64>> {
    token_logprobs
        .iter()
        .map(|t| {
            let mut row = vec![0.0; l - t.len()];
            row.extend(t.iter().map(|&x| f64::from(x)));
            row
        })
        .collect()
}

/// `log pi(y|x)` per response: the sum of its token log-probs.
fn sequence_sums(token_logprobs: &[Vec<f32>]) -> Vec<f32> {
    token_logprobs.iter().map(|t| t.iter().sum()).collect()
}

/// A seed for (run seed, purpose, step, epoch): splitmix64 of the mix.
fn derive_seed(seed: u64, purpose: u64, step: u64, epoch: u64) -> u64 {
    let mut z = seed
        ^ purpose.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ step.rotate_left(21)
        ^ epoch.rotate_left(42);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Trainer {
    /// Loads models, tokenizer, prompts and reward; fails before any training
    /// on bad input.
    pub fn new(
        cfg: TrainConfig,
        out: &Path,
        shift: Option<RewardShift>,
    ) -> Result<Trainer, TrainError> {
        let device = device_of(&cfg.device)?;
        let kernels = Kernels::from_name(&cfg.kernels, device)?;
        if let Device::Cuda(n) = device
            && n >= tch::Cuda::device_count() as usize
        {
            return Err(TrainError::Input(format!(
                "config key `device`: {} CUDA device(s) available",
                tch::Cuda::device_count()
            )));
        }
        if cfg.threads > 0 {
            tch::set_num_threads(cfg.threads as i32);
        }
        let policy = load_model(&cfg.policy, Head::Lm, cfg.seed, device)?;
        let reference = load_model(
            if cfg.reference.is_empty() {
                &cfg.policy
            } else {
                &cfg.reference
            },
            Head::Lm,
            cfg.seed,
            device,
        )?;
        for (_, mut t) in reference.vs.variables() {
            let _ = t.requires_grad_(false);
        }
        let tokenizer_json = tokenizer_json_of(&cfg.policy)?;
        let tokenizer = Tokenizer::from_json(&tokenizer_json, &policy.config)?;
        let reward = Reward::load(&cfg.reward, "reward", cfg.max_new_tokens, device)?;
        let gold = if cfg.gold_reward.is_empty() {
            None
        } else {
            Some(Reward::load(
                &cfg.gold_reward,
                "gold_reward",
                cfg.max_new_tokens,
                device,
            )?)
        };
        let (prompts, eval_prompts) = if cfg.prompts == TOY_PROMPTS {
            let eval = if cfg.eval_prompts.is_empty() {
                crate::toy::prompts(crate::toy::Split::Eval, builtin::TOY_EVAL_PROMPTS)
            } else {
                load_prompts(Path::new(&cfg.eval_prompts)).map_err(TrainError::Input)?
            };
            (
                crate::toy::prompts(crate::toy::Split::Train, builtin::TOY_TRAIN_PROMPTS),
                eval,
            )
        } else if cfg.prompts == BUILTIN_PROMPTS {
            let train: Vec<String> = builtin::TRAIN_PROMPTS
                .iter()
                .map(|s| s.to_string())
                .collect();
            let eval = if cfg.eval_prompts.is_empty() {
                builtin::EVAL_PROMPTS
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            } else {
                load_prompts(Path::new(&cfg.eval_prompts)).map_err(TrainError::Input)?
            };
            (train, eval)
        } else {
            let all = load_prompts(Path::new(&cfg.prompts)).map_err(TrainError::Input)?;
            if cfg.eval_prompts.is_empty() {
                let cut = all.len() - (all.len() / 10).max(1).min(all.len() - 1);
                let (a, b) = all.split_at(cut.max(1));
                (
                    a.to_vec(),
                    if b.is_empty() { a.to_vec() } else { b.to_vec() },
                )
            } else {
                (
                    all,
                    load_prompts(Path::new(&cfg.eval_prompts)).map_err(TrainError::Input)?,
                )
            }
        };
        let max = policy.config.max_positions();
        for p in prompts.iter().chain(&eval_prompts) {
            let n = tokenizer.encode(p)?.len() as i64;
            if n == 0 || n + cfg.max_new_tokens > max {
                return Err(TrainError::Input(format!(
                    "prompt {p:?}: {n} tokens + max_new_tokens {} do not fit the model's {max} positions (or the prompt is empty)",
                    cfg.max_new_tokens
                )));
            }
        }
        let mut policy = policy;
        if cfg.dtype == "bf16" {
            policy.vs.bfloat16();
        }
        let value_head = (cfg.algorithm() == Algorithm::Ppo).then(|| {
            let vs = tch::nn::VarStore::new(device);
            let linear = Linear::new(vs.root() / "v_head", policy.config.hidden_size(), 1, true);
            ValueHead { vs, linear }
        });
        let mut stores = vec![&policy.vs];
        if let Some(v) = &value_head {
            stores.push(&v.vs);
        }
        let opt = AdamW::new(&stores, cfg.weight_decay);
        Ok(Trainer {
            cfg,
            out: out.to_path_buf(),
            policy,
            reference,
            reward,
            gold,
            tokenizer,
            tokenizer_json,
            prompts,
            eval_prompts,
            shift,
            opt,
            kernels,
            value_head,
            score_stats: (0.0, 0.0, 0.0),
            step: 0,
            nonfinite_in_row: 0,
            nonfinite_total: 0,
        })
    }

    fn hyper(&self) -> Hyper {
        Hyper {
            beta: self.cfg.beta,
            epsilon: self.cfg.epsilon,
            vf_coef: 1.0,
        }
    }

    /// Responses to `prompt_ids` with the log-probs of their tokens under the
    /// policy that sampled them (the behaviour policy of the step).
    fn sample(&self, prompt_ids: &[Vec<i64>], seed: u64) -> Result<Generation, TrainError> {
        let o = GenerateOptions {
            max_new_tokens: self.cfg.max_new_tokens,
            temperature: self.cfg.temperature,
            top_k: self.cfg.top_k,
            top_p: self.cfg.top_p,
            seed,
            eos_token_id: self.tokenizer.eos_token_id,
            pad_token_id: self.tokenizer.pad_token_id.unwrap_or(0),
            use_cache: true,
            logprobs: true,
        };
        Ok(generate(&self.policy, prompt_ids, &o)?)
    }

    /// The prompts of step `step`: a seeded permutation of the prompt set per
    /// pass over it.
    fn batch_prompts(&self, step: usize, count: usize) -> Vec<String> {
        let n = self.prompts.len();
        (0..count)
            .map(|i| {
                let j = step * count + i;
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(
                    self.cfg.seed,
                    1,
                    (j / n) as u64,
                    0,
                )));
                self.prompts[order[j % n]].clone()
            })
            .collect()
    }

    /// One step: rollout, then epochs of minibatch updates. Returns the
    /// metrics line.
    fn train_step(&mut self, total_opt_steps: usize) -> Result<serde_json::Value, TrainError> {
        if self.value_head.is_some() {
            return self.ppo_step(total_opt_steps);
        }
        let started = Instant::now();
        let step = self.step;
        let alg = self.cfg.algorithm();
        let h = self.hyper();
        let texts = self.batch_prompts(step, self.cfg.batch_size);
        let mut prompt_ids = Vec::with_capacity(2 * texts.len());
        for t in &texts {
            let ids = self.tokenizer.encode(t)?;
            prompt_ids.push(ids.clone());
            prompt_ids.push(ids);
        }
        let pair_texts: Vec<String> = texts.iter().flat_map(|t| [t.clone(), t.clone()]).collect();
        let sampled = self.sample(&prompt_ids, derive_seed(self.cfg.seed, 2, step as u64, 0))?;
        let generated = Instant::now();
        // log pi_old(y|x) from the sampling pass itself: the same model and
        // weights, so no second forward pass (tests/torch_models.rs checks
        // that these equal a recomputation to CACHE_VS_RECOMPUTE per token).
        let lp_old_v = sequence_sums(&sampled.token_logprobs);
        let responses = sampled.response_ids;
        let lp_ref =
            sequence_logprobs_with(&self.reference, &prompt_ids, &responses, &self.kernels)?
                .to_kind(Kind::Float);
        let raw = self
            .reward
            .score(&self.tokenizer, &prompt_ids, &responses)?;
        let shifted: Vec<f64> = raw
            .iter()
            .zip(&pair_texts)
            .map(|(r, t)| r + self.shift.map_or(0.0, |s| s.delta_for_text(t)))
            .collect();
        if shifted.iter().any(|r| !r.is_finite()) {
            return self.skip_rollout(alg.name());
        }
        let device = self.policy.device();
        let pairs = texts.len();
        let scored = Instant::now();
        let lp_ref_v =
            Vec::<f32>::try_from(&lp_ref.to_device(Device::Cpu)).map_err(TorchError::from)?;

        let (mut clipped, mut entries, mut ratio_sum, mut ratio_n) = (0usize, 0usize, 0.0, 0usize);
        let mut updates = Updates::default();
        self.opt.zero_grad();
        for epoch in 0..self.cfg.epochs {
            let mut order: Vec<usize> = (0..pairs).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(
                self.cfg.seed,
                3,
                step as u64,
                epoch as u64,
            )));
            for mb in order.chunks(self.cfg.minibatch_size) {
                let rows: Vec<usize> = mb.iter().flat_map(|&p| [2 * p, 2 * p + 1]).collect();
                let pick =
                    |v: &Vec<Vec<i64>>| rows.iter().map(|&r| v[r].clone()).collect::<Vec<_>>();
                let (window, detached) = token_window_with(
                    &self.policy,
                    None,
                    &pick(&prompt_ids),
                    &pick(&responses),
                    &self.kernels,
                )?;
                let lp_new = window
                    .lp
                    .sum_dim_intlist([-1i64].as_slice(), false, Kind::Float);
                let col = |src: &[f32], side: usize| {
                    Tensor::from_slice(&mb.iter().map(|&p| src[2 * p + side]).collect::<Vec<f32>>())
                        .to_device(device)
                };
                let idx = |side: usize| {
                    Tensor::from_slice(
                        &(0..mb.len())
                            .map(|k| (2 * k + side) as i64)
                            .collect::<Vec<i64>>(),
                    )
                    .to_device(device)
                };
                let lp = [
                    lp_new.index_select(0, &idx(0)),
                    lp_new.index_select(0, &idx(1)),
                ];
                let old = [col(&lp_old_v, 0), col(&lp_old_v, 1)];
                let refs = [col(&lp_ref_v, 0), col(&lp_ref_v, 1)];
                let rew = [0, 1].map(|side| {
                    Tensor::from_slice(
                        &mb.iter()
                            .map(|&p| shifted[2 * p + side])
                            .collect::<Vec<f64>>(),
                    )
                    .to_device(device)
                });
                let batch = PairBatch {
                    lp: [&lp[0], &lp[1]],
                    lp_old: [&old[0], &old[1]],
                    lp_ref: [&refs[0], &refs[1]],
                    reward: [&rew[0], &rew[1]],
                };
                let loss = self.kernels.pair_loss(alg, &h, &batch)?;
                let loss_v = loss.double_value(&[]);
                // Clip statistics by the reference's own rule ([C-CLIP]).
                let to_host = |t: &Tensor| Vec::<f32>::try_from(&t.detach().to_device(Device::Cpu));
                let lp_v = [
                    to_host(&lp[0]).map_err(TorchError::from)?,
                    to_host(&lp[1]).map_err(TorchError::from)?,
                ];
                for (k, &p) in mb.iter().enumerate() {
                    let consts = PairConsts {
                        reward: [shifted[2 * p], shifted[2 * p + 1]],
                        lp_old: [f64::from(lp_old_v[2 * p]), f64::from(lp_old_v[2 * p + 1])],
                        lp_ref: [f64::from(lp_ref_v[2 * p]), f64::from(lp_ref_v[2 * p + 1])],
                    };
                    let vars = PairVars {
                        lp: [f64::from(lp_v[0][k]), f64::from(lp_v[1][k])],
                        value: 0.0,
                    };
                    let unclipped = crate::reference::pair_loss(
                        alg,
                        &Hyper {
                            epsilon: f64::INFINITY,
                            ..h
                        },
                        &consts,
                        vars,
                    );
                    let with_clip = crate::reference::pair_loss(alg, &h, &consts, vars);
                    for s in 0..2 {
                        entries += 1;
                        clipped +=
                            usize::from(unclipped.grad.lp[s] != 0.0 && with_clip.grad.lp[s] == 0.0);
                        ratio_sum += (vars.lp[s] - consts.lp_old[s]).exp();
                        ratio_n += 1;
                    }
                }
                self.add_minibatch(loss, loss_v, detached, &mut updates, total_opt_steps)?;
            }
        }
        self.finish_updates(&mut updates, total_opt_steps)?;
        let kl = lp_old_v
            .iter()
            .zip(&lp_ref_v)
            .map(|(a, b)| f64::from(a - b))
            .sum::<f64>()
            / raw.len() as f64;
        let entropy_sum = -lp_old_v.iter().map(|&v| f64::from(v)).sum::<f64>();
        let stats = StepStats {
            kl_mean: kl,
            entropy_sum,
            clip_fraction: clipped as f64 / entries.max(1) as f64,
            ratio_mean: ratio_sum / ratio_n.max(1) as f64,
            times: [started, generated, scored],
        };
        Ok(self.step_metrics(
            alg.name(),
            &raw,
            &responses,
            &stats,
            &updates,
            total_opt_steps,
        ))
    }

    /// One PPO step ([C-PPO-TOKEN]): twice the prompts, one response each
    /// (the same number of responses as a P3O step), per-token KL penalty
    /// with the score on the last token, GAE, whitening, value clipping.
    fn ppo_step(&mut self, total_opt_steps: usize) -> Result<serde_json::Value, TrainError> {
        let started = Instant::now();
        let step = self.step;
        let texts = self.batch_prompts(step, 2 * self.cfg.batch_size);
        let prompt_ids: Vec<Vec<i64>> = texts
            .iter()
            .map(|t| self.tokenizer.encode(t))
            .collect::<Result<_, _>>()?;
        let sampled = self.sample(&prompt_ids, derive_seed(self.cfg.seed, 2, step as u64, 0))?;
        let responses = sampled.response_ids;
        let generated = Instant::now();
        let head = self.value_head.as_ref().expect("PPO has a value head");
        // Behaviour token log-probs from the sampling pass (as for the pair
        // algorithms); the policy's body runs once more for the values only.
        let v_old = tch::no_grad(|| value_window(&self.policy, head, &prompt_ids, &responses));
        let (reference, _) = tch::no_grad(|| {
            token_window_with(
                &self.reference,
                None,
                &prompt_ids,
                &responses,
                &self.kernels,
            )
        })?;
        let raw = self
            .reward
            .score(&self.tokenizer, &prompt_ids, &responses)?;
        let mut scores: Vec<f64> = raw
            .iter()
            .zip(&texts)
            .map(|(r, t)| r + self.shift.map_or(0.0, |s| s.delta_for_text(t)))
            .collect();
        if scores.iter().any(|r| !r.is_finite()) {
            return self.skip_rollout("ppo");
        }
        if self.cfg.reward_scaling == "running" {
            for &x in &scores {
                let (n, mean, m2) = &mut self.score_stats;
                *n += 1.0;
                let d = x - *mean;
                *mean += d / *n;
                *m2 += d * (x - *mean);
            }
            let (n, _, m2) = self.score_stats;
            let std = if n > 1.0 {
                (m2 / (n - 1.0)).sqrt()
            } else {
                0.0
            };
            if std > 0.0 {
                scores.iter_mut().for_each(|x| *x /= std);
            }
        }
        let host = |t: &Tensor| -> Result<Vec<Vec<f64>>, TrainError> {
            let t = t.to_kind(Kind::Double).to_device(Device::Cpu);
            Ok(Vec::<Vec<f64>>::try_from(&t).map_err(TorchError::from)?)
        };
        let (lp_ref, v_old, mask) = (host(&reference.lp)?, host(&v_old)?, host(&reference.mask)?);
        let n = responses.len();
        let l = mask.first().map_or(0, Vec::len);
        let lp_old = right_aligned(&sampled.token_logprobs, l);
        let mut kl_seq = vec![0.0; n];
        let mut rewards = Vec::with_capacity(n);
        for i in 0..n {
            let mut r: Vec<f64> = (0..l)
                .map(|t| -self.cfg.beta * (lp_old[i][t] - lp_ref[i][t]) * mask[i][t])
                .collect();
            kl_seq[i] = (0..l)
                .map(|t| (lp_old[i][t] - lp_ref[i][t]) * mask[i][t])
                .sum();
            r[l - 1] += scores[i];
            rewards.push(r);
        }
        let (mut adv, ret) =
            self.kernels
                .gae(&rewards, &v_old, &mask, self.cfg.gamma, self.cfg.lam)?;
        if self.cfg.whiten_advantages {
            let mut valid = Vec::new();
            for i in 0..n {
                for t in 0..l {
                    if mask[i][t] > 0.0 {
                        valid.push(adv[i][t]);
                    }
                }
            }
            let mean = valid.iter().sum::<f64>() / valid.len().max(1) as f64;
            let std = (valid.iter().map(|a| (a - mean).powi(2)).sum::<f64>()
                / valid.len().max(1) as f64)
                .sqrt();
            for i in 0..n {
                for t in 0..l {
                    adv[i][t] = if mask[i][t] > 0.0 {
                        (adv[i][t] - mean) / (std + 1e-8)
                    } else {
                        0.0
                    };
                }
            }
        }
        let device = self.policy.device();
        let to_t = |rows: &[Vec<f64>], pick: &[usize]| {
            let flat: Vec<f32> = pick
                .iter()
                .flat_map(|&i| rows[i].iter().map(|&x| x as f32))
                .collect();
            Tensor::from_slice(&flat)
                .view([pick.len() as i64, l as i64])
                .to_device(device)
        };
        let h = PpoHyper {
            epsilon: self.cfg.epsilon,
            vf_coef: self.cfg.vf_coef,
            value_clip: self.cfg.cliprange_value,
        };
        let scored = Instant::now();
        let (mut clipped, mut tokens, mut ratio_sum) = (0.0, 0.0, 0.0);
        let mut updates = Updates::default();
        self.opt.zero_grad();
        for epoch in 0..self.cfg.epochs {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(
                self.cfg.seed,
                3,
                step as u64,
                epoch as u64,
            )));
            for mb in order.chunks(2 * self.cfg.minibatch_size) {
                let pick = |v: &Vec<Vec<i64>>| mb.iter().map(|&r| v[r].clone()).collect::<Vec<_>>();
                let head = self.value_head.as_ref().expect("PPO has a value head");
                let (new, detached) = token_window_with(
                    &self.policy,
                    Some(head),
                    &pick(&prompt_ids),
                    &pick(&responses),
                    &self.kernels,
                )?;
                // Windows of a minibatch are as wide as its longest response.
                let lm = new.mask.size()[1];
                let narrow = |t: Tensor| t.narrow(1, l as i64 - lm, lm);
                let (lp_o, v_o, a, rt, m) = (
                    narrow(to_t(&lp_old, mb)),
                    narrow(to_t(&v_old, mb)),
                    narrow(to_t(&adv, mb)),
                    narrow(to_t(&ret, mb)),
                    narrow(to_t(&mask, mb)),
                );
                let values = new.values.as_ref().expect("values");
                let batch = PpoBatch {
                    lp: &new.lp,
                    value: values,
                    lp_old: &lp_o,
                    value_old: &v_o,
                    advantage: &a,
                    ret: &rt,
                    mask: &m,
                };
                let loss = ppo_loss(&batch, &h);
                let loss_v = loss.double_value(&[]);
                tch::no_grad(|| {
                    let rho = (&new.lp - &lp_o).exp();
                    let zeroed = a
                        .gt(0.0)
                        .logical_and(&rho.gt(1.0 + h.epsilon))
                        .logical_or(&a.lt(0.0).logical_and(&rho.lt(1.0 - h.epsilon)));
                    clipped += (zeroed.to_kind(Kind::Float) * &m)
                        .sum(Kind::Double)
                        .double_value(&[]);
                    ratio_sum += (rho * &m).sum(Kind::Double).double_value(&[]);
                    tokens += m.sum(Kind::Double).double_value(&[]);
                });
                self.add_minibatch(loss, loss_v, detached, &mut updates, total_opt_steps)?;
            }
        }
        self.finish_updates(&mut updates, total_opt_steps)?;
        let stats = StepStats {
            kl_mean: kl_seq.iter().sum::<f64>() / n as f64,
            entropy_sum: -(0..n).map(|i| lp_old[i].iter().sum::<f64>()).sum::<f64>(),
            clip_fraction: clipped / tokens.max(1.0),
            ratio_mean: ratio_sum / tokens.max(1.0),
            times: [started, generated, scored],
        };
        Ok(self.step_metrics("ppo", &raw, &responses, &stats, &updates, total_opt_steps))
    }

    /// Ends a step whose rollout had a non-finite reward: no update, counted.
    fn skip_rollout(&mut self, algorithm: &str) -> Result<serde_json::Value, TrainError> {
        self.nonfinite_total += 1;
        self.nonfinite_in_row += 1;
        self.check_nonfinite()?;
        self.step += 1;
        Ok(
            json!({"step": self.step, "algorithm": algorithm, "split": "train", "skipped": "non-finite reward",
                  "nonfinite_skipped": self.nonfinite_total}),
        )
    }

    /// Backpropagates one minibatch's loss (a non-finite loss is skipped and
    /// counted) and steps the optimizer every `grad_accum` minibatches.
    fn add_minibatch(
        &mut self,
        loss: Tensor,
        value: f64,
        detached: Option<Detached>,
        u: &mut Updates,
        total_opt_steps: usize,
    ) -> Result<(), TrainError> {
        if !value.is_finite() {
            self.opt.zero_grad();
            u.accumulated = 0;
            self.nonfinite_total += 1;
            self.nonfinite_in_row += 1;
            return self.check_nonfinite();
        }
        backward(&(loss / self.cfg.grad_accum as f64), detached.as_ref())?;
        u.losses.push(value);
        u.accumulated += 1;
        if u.accumulated == self.cfg.grad_accum {
            self.apply_update(total_opt_steps, &mut u.norms)?;
            u.accumulated = 0;
        }
        Ok(())
    }

    /// Applies gradients still accumulated at the end of a step.
    fn finish_updates(
        &mut self,
        u: &mut Updates,
        total_opt_steps: usize,
    ) -> Result<(), TrainError> {
        if u.accumulated > 0 {
            self.apply_update(total_opt_steps, &mut u.norms)?;
            u.accumulated = 0;
        }
        Ok(())
    }

    /// The metrics line of a finished step (and the step counter moves on).
    fn step_metrics(
        &mut self,
        algorithm: &str,
        raw: &[f64],
        responses: &[Vec<i64>],
        st: &StepStats,
        u: &Updates,
        total_opt_steps: usize,
    ) -> serde_json::Value {
        self.step += 1;
        let n = raw.len() as f64;
        let mean = raw.iter().sum::<f64>() / n;
        let std = (raw.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
        let tokens: usize = responses.iter().map(Vec::len).sum();
        let mean_of = |v: &[f64]| {
            if v.is_empty() {
                f64::NAN
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let [started, generated, scored] = st.times;
        json!({
            "step": self.step, "algorithm": algorithm, "split": "train",
            "reward_mean": mean, "reward_std": std, "kl_mean": st.kl_mean, "entropy": st.entropy_sum / tokens.max(1) as f64,
            "clip_fraction": st.clip_fraction, "ratio_mean": st.ratio_mean,
            "response_length": tokens as f64 / n, "loss": mean_of(&u.losses), "grad_norm": mean_of(&u.norms),
            "lr": learning_rate(self.cfg.lr, &self.cfg.lr_schedule, self.cfg.warmup_steps, self.opt.step.max(1) as usize - 1, total_opt_steps),
            "samples_per_s": n / started.elapsed().as_secs_f64(),
            "time_generate_s": (generated - started).as_secs_f64(),
            "time_score_s": (scored - generated).as_secs_f64(),
            "time_update_s": scored.elapsed().as_secs_f64(),
            "nonfinite_skipped": self.nonfinite_total,
        })
    }

    fn apply_update(
        &mut self,
        total_opt_steps: usize,
        norms: &mut Vec<f64>,
    ) -> Result<(), TrainError> {
        let norm = self.opt.clip_grad_norm(self.cfg.max_grad_norm);
        if !norm.is_finite() {
            self.opt.zero_grad();
            self.nonfinite_total += 1;
            self.nonfinite_in_row += 1;
            return self.check_nonfinite();
        }
        self.nonfinite_in_row = 0;
        norms.push(norm);
        let lr = learning_rate(
            self.cfg.lr,
            &self.cfg.lr_schedule,
            self.cfg.warmup_steps,
            self.opt.step as usize,
            total_opt_steps,
        );
        self.opt.step(lr);
        self.opt.zero_grad();
        Ok(())
    }

    fn check_nonfinite(&self) -> Result<(), TrainError> {
        if self.nonfinite_in_row >= self.cfg.max_nonfinite.max(1) {
            return Err(TrainError::Stopped(format!(
                "stopped at step {}: {} updates in a row had a non-finite reward, loss or gradient (max_nonfinite = {})",
                self.step + 1,
                self.nonfinite_in_row,
                self.cfg.max_nonfinite
            )));
        }
        Ok(())
    }

    /// Mean reward (unshifted) and sequence KL to the reference on the eval
    /// prompts, `eval_samples` sampled responses each with a fixed seed.
    fn evaluate(&self) -> Result<serde_json::Value, TrainError> {
        let mut ids: Vec<Vec<i64>> = Vec::new();
        for p in &self.eval_prompts {
            let p = self.tokenizer.encode(p)?;
            ids.extend(std::iter::repeat_n(p, self.cfg.eval_samples));
        }
        let sampled = self.sample(&ids, derive_seed(self.cfg.seed, 4, 0, 0))?;
        let responses = sampled.response_ids;
        let lp = Tensor::from_slice(&sequence_sums(&sampled.token_logprobs));
        let lp_ref = sequence_logprobs_with(&self.reference, &ids, &responses, &self.kernels)?;
        let kl = (lp.to_kind(Kind::Double) - lp_ref.to_device(Device::Cpu).to_kind(Kind::Double))
            .mean(Kind::Double)
            .double_value(&[]);
        let r = self.reward.score(&self.tokenizer, &ids, &responses)?;
        let mut line = json!({"step": self.step, "algorithm": self.cfg.algorithm, "split": "eval",
                              "reward_mean": r.iter().sum::<f64>() / r.len() as f64, "kl_mean": kl});
        if let Some(g) = &self.gold {
            let r = g.score(&self.tokenizer, &ids, &responses)?;
            line["gold_reward_mean"] = json!(r.iter().sum::<f64>() / r.len() as f64);
        }
        Ok(line)
    }

    fn checkpoint_dir(&self) -> PathBuf {
        self.out.join("checkpoints")
    }

    /// Writes `checkpoints/step-N` through a temporary directory and a rename.
    fn save_checkpoint(&self) -> Result<(), TrainError> {
        let root = self.checkpoint_dir();
        std::fs::create_dir_all(&root)?;
        let dir = root.join(format!("step-{}", self.step));
        let tmp = root.join(format!(".step-{}.tmp", self.step));
        let _ = std::fs::remove_dir_all(&tmp);
        self.save_model(&tmp)?;
        write_tensors(&self.opt.state(), &tmp.join("optimizer.safetensors"))?;
        if let Some(v) = &self.value_head {
            let mut vars: Vec<(String, Tensor)> = v.vs.variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            write_tensors(&vars, &tmp.join("value_head.safetensors"))?;
        }
        let state = json!({"step": self.step, "optimizer_step": self.opt.step, "nonfinite_in_row": self.nonfinite_in_row,
                           "nonfinite_total": self.nonfinite_total, "score_stats": [self.score_stats.0, self.score_stats.1, self.score_stats.2],
                           "config": self.cfg});
        std::fs::write(
            tmp.join("state.json"),
            serde_json::to_string_pretty(&state).expect("JSON"),
        )?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir)?;
        Ok(())
    }

    fn save_model(&self, dir: &Path) -> Result<(), TrainError> {
        self.policy.save(dir)?;
        std::fs::write(dir.join("tokenizer.json"), &self.tokenizer_json)?;
        Ok(())
    }

    /// Continues from the last complete checkpoint, if any; returns its step.
    pub fn resume(&mut self) -> Result<Option<usize>, TrainError> {
        let Ok(entries) = std::fs::read_dir(self.checkpoint_dir()) else {
            return Ok(None);
        };
        let last = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("step-"))
                    .and_then(|n| n.parse::<usize>().ok())
            })
            .filter(|n| {
                self.checkpoint_dir()
                    .join(format!("step-{n}"))
                    .join("state.json")
                    .is_file()
            })
            .max();
        let Some(n) = last else { return Ok(None) };
        let dir = self.checkpoint_dir().join(format!("step-{n}"));
        load_into(&self.policy.vs, &dir)?;
        let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
            dir.join("state.json"),
        )?)
        .map_err(|e| TrainError::Input(format!("{}: {e}", dir.join("state.json").display())))?;
        let tensors = read_tensors(&dir.join("optimizer.safetensors"), self.policy.device())?;
        self.opt
            .load_state(&tensors)
            .map_err(|e| TrainError::Input(format!("{}: {e}", dir.display())))?;
        if let Some(v) = &self.value_head {
            let saved = read_tensors(&dir.join("value_head.safetensors"), self.policy.device())?;
            for (name, mut var) in v.vs.variables() {
                let src = saved.get(&name).ok_or_else(|| {
                    TrainError::Input(format!("{}: value head `{name}` missing", dir.display()))
                })?;
                tch::no_grad(|| var.copy_(src));
            }
        }
        if let Some(s) = state["score_stats"].as_array() {
            let f = |i: usize| s.get(i).and_then(|v| v.as_f64()).unwrap_or(0.0);
            self.score_stats = (f(0), f(1), f(2));
        }
        self.opt.step = state["optimizer_step"].as_i64().unwrap_or(0);
        self.step = n;
        self.nonfinite_in_row = state["nonfinite_in_row"].as_u64().unwrap_or(0) as usize;
        self.nonfinite_total = state["nonfinite_total"].as_u64().unwrap_or(0) as usize;
        // Metrics written after that checkpoint by the interrupted run go.
        let metrics = self.out.join("metrics.jsonl");
        if let Ok(text) = std::fs::read_to_string(&metrics) {
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s as usize <= n)
                })
                .collect();
            let tmp = self.out.join(".metrics.jsonl.tmp");
            std::fs::write(
                &tmp,
                kept.iter().map(|l| format!("{l}\n")).collect::<String>(),
            )?;
            std::fs::rename(&tmp, &metrics)?;
        }
        Ok(Some(n))
    }

    /// Runs to `cfg.steps`, appending metrics to `DIR/metrics.jsonl`, writing
    /// checkpoints and finally `DIR/final`.
    pub fn run(&mut self) -> Result<serde_json::Value, TrainError> {
        std::fs::create_dir_all(&self.out)?;
        let mut metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.out.join("metrics.jsonl"))?;
        let updates_per_step = self.cfg.epochs
            * self
                .cfg
                .batch_size
                .div_ceil(self.cfg.minibatch_size)
                .div_ceil(self.cfg.grad_accum);
        let total_opt_steps = updates_per_step * self.cfg.steps;
        let bar = progress_bar(self.cfg.steps as u64, "steps");
        bar.set_position(self.step as u64);
        let mut last = serde_json::Value::Null;
        if self.step == 0 && self.cfg.eval_every > 0 {
            // The starting point of the KL-reward curve.
            writeln!(metrics, "{}", self.evaluate()?)?;
        }
        while self.step < self.cfg.steps {
            let line = self.train_step(total_opt_steps)?;
            writeln!(metrics, "{line}")?;
            bar.set_message(format!(
                "reward {:.3} kl {:.3}",
                line["reward_mean"].as_f64().unwrap_or(f64::NAN),
                line["kl_mean"].as_f64().unwrap_or(f64::NAN)
            ));
            bar.inc(1);
            if self.cfg.eval_every > 0 && self.step.is_multiple_of(self.cfg.eval_every) {
                writeln!(metrics, "{}", self.evaluate()?)?;
            }
            if self.cfg.checkpoint_every > 0 && self.step.is_multiple_of(self.cfg.checkpoint_every)
            {
                metrics.flush()?;
                self.save_checkpoint()?;
            }
            last = line;
        }
        bar.finish_and_clear();
        metrics.flush()?;
        self.save_model(&self.out.join("final"))?;
        Ok(last)
    }

    /// Runs one training step outside [`Self::run`] (benchmarks) and returns
    /// its metrics line.
    pub fn step_once(&mut self) -> Result<serde_json::Value, TrainError> {
        let total = self.cfg.steps
            * self.cfg.epochs
            * self.cfg.batch_size.div_ceil(self.cfg.minibatch_size);
        self.train_step(total)
    }

    /// The policy's parameters, by name (for tests).
    pub fn policy_weights(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.policy.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}
