//! PPO's step as the paper ran it ([C-PPO-TOKEN]): twice the prompts, one
//! response each (the same number of responses as a pair step), a per-token
//! KL penalty with the score on the last token, GAE from the value head,
//! advantage whitening, and the clipped policy and value losses.

use std::time::Instant;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::metrics::MetricsLine;
use super::update::{StepStats, Updates};
use super::{Trainer, right_aligned, rows_tensor};
use crate::reference::ppo_tokens::PpoHyper;
use crate::torch::TorchError;
use crate::train::config::RewardScaling;
use crate::train::error::TrainError;
use crate::train::kernels::TokenRows;
use crate::train::losses::{PpoBatch, ppo_loss};
use crate::train::scoring::{
    ValueHead, token_window_checkpointed, token_window_with, value_window,
};
use crate::train::seed::SeedPurpose;

/// Per-token rewards `-beta (lp_old - lp_ref)` with the score added on the
/// last token, and each row's sequence KL.
fn token_rewards(
    lp_old: &TokenRows,
    lp_ref: &TokenRows,
    mask: &TokenRows,
    scores: &[f64],
    beta: f64,
) -> (TokenRows, Vec<f64>) {
    let l = mask.first().map_or(0, Vec::len);
    let mut kl_seq = vec![0.0; scores.len()];
    let mut rewards = Vec::with_capacity(scores.len());
    for (i, &score) in scores.iter().enumerate() {
        let mut r: Vec<f64> = (0..l)
            .map(|t| -beta * (lp_old[i][t] - lp_ref[i][t]) * mask[i][t])
            .collect();
        kl_seq[i] = (0..l)
            .map(|t| (lp_old[i][t] - lp_ref[i][t]) * mask[i][t])
            .sum();
        if let Some(last) = r.last_mut() {
            *last += score;
        }
        rewards.push(r);
    }
    (rewards, kl_seq)
}

/// Advantages over the valid tokens to mean 0 and standard deviation 1
/// (`(A - mean) / (std + 1e-8)`), zero elsewhere.
fn whiten(adv: &mut TokenRows, mask: &TokenRows) {
    let valid: Vec<f64> = adv
        .iter()
        .zip(mask)
        .flat_map(|(a, m)| a.iter().zip(m).filter(|(_, m)| **m > 0.0).map(|(a, _)| *a))
        .collect();
    let count = valid.len().max(1) as f64;
    let mean = valid.iter().sum::<f64>() / count;
    let std = (valid.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / count).sqrt();
    for (a, m) in adv.iter_mut().zip(mask) {
        for (a, m) in a.iter_mut().zip(m) {
            *a = if *m > 0.0 {
                (*a - mean) / (std + 1e-8)
            } else {
                0.0
            };
        }
    }
}

/// Adds `scores` to the running (count, mean, M2) and divides them by the
/// running standard deviation, when there is one (`reward_scaling =
/// running`).
fn scale_by_running_std(stats: &mut [f64; 3], scores: &mut [f64]) {
    for &x in scores.iter() {
        let [n, mean, m2] = stats;
        *n += 1.0;
        let d = x - *mean;
        *mean += d / *n;
        *m2 += d * (x - *mean);
    }
    let [n, _, m2] = *stats;
    let std = if n > 1.0 {
        (m2 / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    if std > 0.0 {
        scores.iter_mut().for_each(|x| *x /= std);
    }
}

/// A tensor's values as float64 rows on the host.
fn host_rows(t: &Tensor) -> Result<TokenRows, TrainError> {
    let t = t.to_kind(Kind::Double).to_device(Device::Cpu);
    Ok(Vec::<Vec<f64>>::try_from(&t).map_err(TorchError::from)?)
}

impl Trainer {
    fn value_head(&self) -> Result<&ValueHead, TrainError> {
        self.value_head
            .as_ref()
            .ok_or(TrainError::Internal("a PPO run without its value head"))
    }

    /// One PPO step; returns its metrics line.
    pub(super) fn ppo_step(&mut self, total_opt_steps: usize) -> Result<MetricsLine, TrainError> {
        let rollout = self.rollout(2 * self.cfg.batch_size, 1)?;
        if rollout.has_nonfinite_reward() {
            return self.skip_rollout();
        }
        let (prompt_ids, responses) = (&rollout.prompt_ids, &rollout.responses);
        // Behaviour token log-probs from the sampling pass (as for the pair
        // algorithms); the policy's body runs once more for the values only.
        let head = self.value_head()?;
        let v_old = tch::no_grad(|| value_window(&self.policy, head, prompt_ids, responses))?;
        let (reference, _) = self.with_reference(|r| {
            tch::no_grad(|| token_window_with(r, None, prompt_ids, responses, &self.kernels))
        })?;
        let mut scores = rollout.shifted.clone();
        if self.cfg.reward_scaling == RewardScaling::Running {
            scale_by_running_std(&mut self.score_stats, &mut scores);
        }
        let (lp_ref, v_old, mask) = (
            host_rows(&reference.lp)?,
            host_rows(&v_old)?,
            host_rows(&reference.mask)?,
        );
        let n = responses.len();
        let l = mask.first().map_or(0, Vec::len);
        let lp_old = right_aligned(&rollout.token_logprobs, l);
        let (rewards, kl_seq) = token_rewards(&lp_old, &lp_ref, &mask, &scores, self.cfg.beta);
        let (mut adv, ret) =
            self.kernels
                .gae(&rewards, &v_old, &mask, self.cfg.gamma, self.cfg.lam)?;
        if self.cfg.whiten_advantages {
            whiten(&mut adv, &mask);
        }
        let device = self.policy.device();
        let h = PpoHyper {
            epsilon: self.cfg.epsilon,
            vf_coef: self.cfg.vf_coef,
            value_clip: self.cfg.cliprange_value,
        };
        let scored = Instant::now();
        let (mut clipped, mut tokens, mut ratio_sum) = (0.0, 0.0, 0.0);
        let mut entropy_sum = 0.0;
        let mut updates = Updates::default();
        self.opt.zero_grad();
        for epoch in 0..self.cfg.epochs {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(
                SeedPurpose::Minibatches.seed(self.cfg.seed, self.step as u64, epoch as u64),
            ));
            for mb in order.chunks(2 * self.cfg.minibatch_size) {
                let pick = |v: &[Vec<i64>]| mb.iter().map(|&r| v[r].clone()).collect::<Vec<_>>();
                let (new, detached, kept) = token_window_checkpointed(
                    &self.policy,
                    Some(self.value_head()?),
                    &pick(prompt_ids),
                    &pick(responses),
                    &self.kernels,
                    self.cfg.gradient_checkpointing,
                )?;
                // Windows of a minibatch are as wide as its longest response.
                let lm = new.mask.size()[1];
                let narrow =
                    |rows: &TokenRows| rows_tensor(rows, mb, device).narrow(1, l as i64 - lm, lm);
                let (lp_o, v_o, a, rt, m) = (
                    narrow(&lp_old),
                    narrow(&v_old),
                    narrow(&adv),
                    narrow(&ret),
                    narrow(&mask),
                );
                let values = new
                    .values
                    .as_ref()
                    .ok_or(TrainError::Internal("PPO's window without values"))?;
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
                    if let (0, Some(e)) = (epoch, &new.entropy) {
                        entropy_sum += e.sum(Kind::Double).double_value(&[]);
                    }
                });
                self.add_minibatch(loss, loss_v, detached, kept, &mut updates, total_opt_steps)?;
            }
        }
        self.finish_updates(&mut updates, total_opt_steps)?;
        let stats = StepStats {
            kl_mean: kl_seq.iter().sum::<f64>() / n as f64,
            entropy_sum,
            clip_fraction: clipped / tokens.max(1.0),
            ratio_mean: ratio_sum / tokens.max(1.0),
            times: [rollout.started, rollout.generated, scored],
        };
        Ok(self.step_metrics(&rollout.raw, responses, &stats, &updates, total_opt_steps))
    }
}
