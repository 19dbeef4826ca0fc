//! The step of the pair algorithms (P3O-V1, P3O-V2, online DPO): two
//! responses per prompt, the reference's sequence log-probs, then epochs of
//! minibatches of pairs through [`Kernels::pair_loss`], with clip statistics
//! by the float64 reference's own rule ([C-CLIP]).
//!
//! [`Kernels::pair_loss`]: crate::train::kernels::Kernels::pair_loss

use std::time::Instant;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::metrics::MetricsLine;
use super::update::{StepStats, Updates};
use super::{Trainer, sequence_sums};
use crate::reference::{self, Hyper, PairConsts, PairVars};
use crate::torch::TorchError;
use crate::train::error::TrainError;
use crate::train::losses::PairBatch;
use crate::train::scoring::{sequence_logprobs_with, token_window_with};
use crate::train::seed::SeedPurpose;

/// Clipped entries and importance ratios of a step, for its metrics line.
#[derive(Default)]
struct ClipStats {
    clipped: usize,
    entries: usize,
    ratio_sum: f64,
}

impl Trainer {
    /// One step of a pair algorithm; returns its metrics line.
    pub(super) fn pair_step(&mut self, total_opt_steps: usize) -> Result<MetricsLine, TrainError> {
        let alg = self.cfg.algorithm.reference();
        let h = Hyper {
            beta: self.cfg.beta,
            epsilon: self.cfg.epsilon,
            vf_coef: 1.0,
            ..Hyper::default()
        };
        let rollout = self.rollout(self.cfg.batch_size, 2)?;
        if rollout.has_nonfinite_reward() {
            return self.skip_rollout();
        }
        // log pi_old(y|x) from the sampling pass itself: the same model and
        // weights, so no second forward pass (tests/torch_models.rs checks
        // that these equal a recomputation to CACHE_VS_RECOMPUTE per token).
        let lp_old_v = sequence_sums(&rollout.token_logprobs);
        let (prompt_ids, responses, shifted) =
            (&rollout.prompt_ids, &rollout.responses, &rollout.shifted);
        let lp_ref = sequence_logprobs_with(&self.reference, prompt_ids, responses, &self.kernels)?
            .to_kind(Kind::Float);
        let lp_ref_v =
            Vec::<f32>::try_from(&lp_ref.to_device(Device::Cpu)).map_err(TorchError::from)?;
        let scored = Instant::now();
        let device = self.policy.device();
        let pairs = responses.len() / 2;

        let mut stats = ClipStats::default();
        let mut updates = Updates::default();
        self.opt.zero_grad();
        for epoch in 0..self.cfg.epochs {
            let mut order: Vec<usize> = (0..pairs).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(
                SeedPurpose::Minibatches.seed(self.cfg.seed, self.step as u64, epoch as u64),
            ));
            for mb in order.chunks(self.cfg.minibatch_size) {
                let rows: Vec<usize> = mb.iter().flat_map(|&p| [2 * p, 2 * p + 1]).collect();
                let pick = |v: &[Vec<i64>]| rows.iter().map(|&r| v[r].clone()).collect::<Vec<_>>();
                let (window, detached) = token_window_with(
                    &self.policy,
                    None,
                    &pick(prompt_ids),
                    &pick(responses),
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
                    stats.add(alg, &h, &consts, vars);
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
            / rollout.raw.len() as f64;
        let entropy_sum = -lp_old_v.iter().map(|&v| f64::from(v)).sum::<f64>();
        let step_stats = StepStats {
            kl_mean: kl,
            entropy_sum,
            clip_fraction: stats.clipped as f64 / stats.entries.max(1) as f64,
            ratio_mean: stats.ratio_sum / stats.entries.max(1) as f64,
            times: [rollout.started, rollout.generated, scored],
        };
        Ok(self.step_metrics(
            &rollout.raw,
            &rollout.responses,
            &step_stats,
            &updates,
            total_opt_steps,
        ))
    }
}

impl ClipStats {
    /// Counts the pair's two log-probs: clipped where the clip zeroes a
    /// gradient that the unclipped loss has ([C-CLIP]), and their ratios.
    fn add(&mut self, alg: reference::Algorithm, h: &Hyper, consts: &PairConsts, vars: PairVars) {
        let unclipped = reference::pair_loss(
            alg,
            &Hyper {
                epsilon: f64::INFINITY,
                ..*h
            },
            consts,
            vars,
        );
        let with_clip = reference::pair_loss(alg, h, consts, vars);
        for s in 0..2 {
            self.entries += 1;
            self.clipped += usize::from(unclipped.grad.lp[s] != 0.0 && with_clip.grad.lp[s] == 0.0);
            self.ratio_sum += (vars.lp[s] - consts.lp_old[s]).exp();
        }
    }
}
