//! The step of the group algorithms (P3O-V1, P3O-V2, online DPO, RLOO,
//! GRPO, p3o-trlx): `responses_per_prompt` responses per prompt, the
//! reference's sequence log-probs, then epochs of minibatches of groups
//! through [`Kernels::group_loss`] (or p3o-trlx's token-level loss), with
//! clip statistics by the float64 reference's own rule ([C-CLIP]).
//!
//! [`Kernels::group_loss`]: crate::train::kernels::Kernels::group_loss

use std::time::Instant;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::metrics::MetricsLine;
use super::update::{StepStats, Updates};
use super::{Trainer, right_aligned, rows_tensor, sequence_sums};
use crate::reference::group::{GroupVars, group_surrogate};
use crate::reference::group_losses::GroupConsts;
use crate::reference::{self, Hyper};
use crate::torch::TorchError;
use crate::train::config::Algorithm;
use crate::train::error::TrainError;
use crate::train::losses::{GroupBatch, TokenGroupBatch, p3o_trlx_token_loss};
use crate::train::scoring::{
    TokenWindow, groups_share_prompts, sequence_logprobs_with, shared_prefix_logprobs,
    shared_prefix_sequence_logprobs, token_window_checkpointed,
};
use crate::train::seed::SeedPurpose;

/// Clipped entries and importance ratios of a step, for its metrics line.
#[derive(Default)]
struct ClipStats {
    clipped: usize,
    entries: usize,
    ratio_sum: f64,
}

impl Trainer {
    /// The float64 reference's hyper-parameters of this run.
    fn hyper(&self) -> Hyper {
        Hyper {
            beta: self.cfg.beta,
            epsilon: self.cfg.epsilon,
            vf_coef: 1.0,
            cliprange_ratio: self.cfg.cliprange_ratio,
            scale_rewards: self.cfg.scale_rewards,
            std_eps: self.cfg.std_eps,
        }
    }

    /// One step of a group algorithm; returns its metrics line.
    pub(super) fn group_step(&mut self, total_opt_steps: usize) -> Result<MetricsLine, TrainError> {
        let alg = self.cfg.algorithm.reference();
        let h = self.hyper();
        let size = self.cfg.responses_per_prompt;
        let token_level = self.cfg.algorithm == Algorithm::P3oTrlx
            && (self.cfg.clip_tokenwise || self.cfg.avg_tokenwise);
        let rollout = self.rollout(self.cfg.batch_size, size)?;
        if rollout.has_nonfinite_reward() {
            return self.skip_rollout();
        }
        // log pi_old(y|x) from the sampling pass itself: the same model and
        // weights, so no second forward pass (tests/torch_models.rs checks
        // that these equal a recomputation to CACHE_VS_RECOMPUTE per token).
        let lp_old_v = sequence_sums(&rollout.token_logprobs);
        let (prompt_ids, responses, shifted) =
            (&rollout.prompt_ids, &rollout.responses, &rollout.shifted);
        // Each group's prompt through the models once ([C-SHARED-PREFIX]):
        // the reference's whenever the groups share prompts; the policy's
        // also except for p3o-trlx's token-level options (which need the
        // right-aligned token windows) and checkpointed passes.
        let ref_shared = groups_share_prompts(prompt_ids, size);
        let shared = ref_shared && !token_level && !self.cfg.gradient_checkpointing;
        let group_prompts: Vec<Vec<i64>> = prompt_ids.iter().step_by(size).cloned().collect();
        let lp_ref = self
            .with_reference(|reference| {
                if ref_shared {
                    shared_prefix_sequence_logprobs(
                        reference,
                        &group_prompts,
                        responses,
                        size,
                        &self.kernels,
                    )
                } else {
                    sequence_logprobs_with(reference, prompt_ids, responses, &self.kernels)
                }
            })?
            .to_kind(Kind::Float);
        let lp_ref_v =
            Vec::<f32>::try_from(&lp_ref.to_device(Device::Cpu)).map_err(TorchError::from)?;
        let scored = Instant::now();
        let device = self.policy.device();
        let groups = responses.len() / size;

        let mut stats = ClipStats::default();
        let mut updates = Updates::default();
        let mut entropy_sum = 0.0;
        self.opt.zero_grad();
        for epoch in 0..self.cfg.epochs {
            let mut order: Vec<usize> = (0..groups).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(
                SeedPurpose::Minibatches.seed(self.cfg.seed, self.step as u64, epoch as u64),
            ));
            for mb in order.chunks(self.cfg.minibatch_size) {
                // Group p's responses are rows p G .. p G + G - 1.
                let rows: Vec<usize> = mb.iter().flat_map(|&p| p * size..(p + 1) * size).collect();
                let pick = |v: &[Vec<i64>]| rows.iter().map(|&r| v[r].clone()).collect::<Vec<_>>();
                let shape = [mb.len() as i64, size as i64];
                let (window, lp, detached, kept) = if shared {
                    let prompts: Vec<Vec<i64>> =
                        mb.iter().map(|&p| group_prompts[p].clone()).collect();
                    let (lp, entropy, detached) = shared_prefix_logprobs(
                        &self.policy,
                        &prompts,
                        &pick(responses),
                        size,
                        &self.kernels,
                    )?;
                    if let (0, Some(e)) = (epoch, entropy) {
                        entropy_sum += e.sum(Kind::Double).double_value(&[]);
                    }
                    (None, lp.view(shape), detached, None)
                } else {
                    let (window, detached, kept) = token_window_checkpointed(
                        &self.policy,
                        None,
                        &pick(prompt_ids),
                        &pick(responses),
                        &self.kernels,
                        self.cfg.gradient_checkpointing,
                    )?;
                    if let (0, Some(e)) = (epoch, &window.entropy) {
                        entropy_sum += e.sum(Kind::Double).double_value(&[]);
                    }
                    let lp = window
                        .lp
                        .sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)
                        .view(shape);
                    (Some(window), lp, detached, kept)
                };
                let table = |src: &[f32]| {
                    Tensor::from_slice(&rows.iter().map(|&r| src[r]).collect::<Vec<f32>>())
                        .view(shape)
                        .to_device(device)
                };
                let (old, refs) = (table(&lp_old_v), table(&lp_ref_v));
                let rew =
                    Tensor::from_slice(&rows.iter().map(|&r| shifted[r]).collect::<Vec<f64>>())
                        .view(shape)
                        .to_device(device);
                // Token-level runs never share prompts, so they have a window.
                let loss = if let Some(window) = window.as_ref().filter(|_| token_level) {
                    let picked: Vec<&[f32]> = rows
                        .iter()
                        .map(|&r| rollout.token_logprobs[r].as_slice())
                        .collect();
                    trlx_token_loss(&h, self.cfg.clip_tokenwise, window, &picked, &refs, &rew)?
                } else {
                    let batch = GroupBatch {
                        lp: &lp,
                        lp_old: &old,
                        lp_ref: &refs,
                        reward: &rew,
                    };
                    self.kernels.group_loss(alg, &h, &batch)?
                };
                let loss_v = loss.double_value(&[]);
                let lp_v = Vec::<f32>::try_from(&lp.detach().to_device(Device::Cpu).view([-1]))
                    .map_err(TorchError::from)?;
                for (k, &p) in mb.iter().enumerate() {
                    let at = |src: &[f32]| {
                        (p * size..(p + 1) * size)
                            .map(|r| f64::from(src[r]))
                            .collect::<Vec<f64>>()
                    };
                    let consts = GroupConsts {
                        reward: shifted[p * size..(p + 1) * size].to_vec(),
                        lp_old: at(&lp_old_v),
                        lp_ref: at(&lp_ref_v),
                    };
                    let cur: Vec<f64> = lp_v[k * size..(k + 1) * size]
                        .iter()
                        .map(|&v| f64::from(v))
                        .collect();
                    stats.add(alg, &h, &consts, &cur);
                }
                self.add_minibatch(loss, loss_v, detached, kept, &mut updates, total_opt_steps)?;
            }
        }
        self.finish_updates(&mut updates, total_opt_steps)?;
        let kl = lp_old_v
            .iter()
            .zip(&lp_ref_v)
            .map(|(a, b)| f64::from(a - b))
            .sum::<f64>()
            / rollout.raw.len() as f64;
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

/// [`p3o_trlx_token_loss`] on a minibatch's response window (rows in group
/// order) with the behaviour token log-probs `lp_old` of its rows, laid out
/// as `[P, G, L]`.
fn trlx_token_loss(
    h: &Hyper,
    clip_tokenwise: bool,
    window: &TokenWindow,
    lp_old: &[&[f32]],
    lp_ref: &Tensor,
    reward: &Tensor,
) -> Result<Tensor, TrainError> {
    let (p, g) = lp_ref.size2().map_err(TorchError::from)?;
    let width = window.lp.size()[1];
    let shape = [p, g, width];
    let rows: Vec<Vec<f32>> = lp_old.iter().map(|r| r.to_vec()).collect();
    let all: Vec<usize> = (0..rows.len()).collect();
    let old = rows_tensor(&right_aligned(&rows, width as usize), &all, lp_ref.device())
        .to_kind(window.lp.kind())
        .view(shape);
    Ok(p3o_trlx_token_loss(
        h,
        clip_tokenwise,
        &TokenGroupBatch {
            lp: &window.lp.view(shape),
            lp_old: &old,
            mask: &window.mask.view(shape),
            lp_ref,
            reward,
        },
    ))
}

impl ClipStats {
    /// Counts the group's log-probs: clipped where the clip zeroes a
    /// gradient that the unclipped loss has ([C-CLIP]; over a group, the
    /// response's whole gradient), and their ratios.
    fn add(&mut self, alg: reference::Algorithm, h: &Hyper, consts: &GroupConsts, lp: &[f64]) {
        let at = GroupVars { lp, value: 0.0 };
        let unclipped = group_surrogate(
            alg,
            &Hyper {
                epsilon: f64::INFINITY,
                ..*h
            },
            consts,
            at,
            at,
        );
        let with_clip = group_surrogate(alg, h, consts, at, at);
        for s in 0..lp.len() {
            self.entries += 1;
            self.clipped += usize::from(unclipped.grad_lp[s] != 0.0 && with_clip.grad_lp[s] == 0.0);
            self.ratio_sum += (lp[s] - consts.lp_old[s]).exp();
        }
    }
}
