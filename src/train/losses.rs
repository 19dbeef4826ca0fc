//! The training losses on tch tensors, one function per algorithm, each the
//! batch mean of its per-pair loss in `crate::reference::losses` (the same
//! clause, the same stop-gradients via `detach`). Rewards arrive as float64
//! and their differences are formed in float64 before any cast
//! ([C-SHAPED-REWARD], [C-THM2]).

use tch::{Kind, Tensor};

use crate::reference::{Algorithm, Hyper, ScaleRewards};
use crate::torch::TorchError;

/// A batch of `P` pairs: `[P]` tensors. `lp` carries gradients; the rest are
/// constants.
pub struct PairBatch<'a> {
    pub lp: [&'a Tensor; 2],
    pub lp_old: [&'a Tensor; 2],
    pub lp_ref: [&'a Tensor; 2],
    /// float64 rewards.
    pub reward: [&'a Tensor; 2],
}

/// `D = r~1 - r~2` in float64, then in the log-probs' kind. The reward
/// difference is formed first and the KL terms, which do not involve the
/// rewards, after: then a shift `delta(x)` cancels in `r1 - r2` before
/// anything else is rounded, and `D` is bit-for-bit the same for `r` and
/// `r + delta` whenever both sums `r_i + delta` are exact in float64 (the
/// usual case for rewards from a float32 model, though not guaranteed)
/// ([C-THM2]).
fn shaped_difference(b: &PairBatch, beta: f64) -> Tensor {
    let kl = |i: usize| b.lp_old[i].to_kind(Kind::Double) - b.lp_ref[i].to_kind(Kind::Double);
    ((b.reward[0] - b.reward[1]) - (kl(0) - kl(1)) * beta).to_kind(b.lp[0].kind())
}

/// [C-CLIP]: `min(A q, A clamp(q, lo, hi))` with `A` constant, the band
/// `[lo, hi]` given per element. torch's `minimum` and `clamp` give exactly
/// the reference's gradient (zero on PPO's side of the band, passing on its
/// closed edge). An infinite `eps` leaves `A q`.
fn clipped(a: &Tensor, q: &Tensor, center: &Tensor, eps: f64) -> Tensor {
    let unclipped = a * q;
    if eps.is_infinite() {
        return unclipped;
    }
    unclipped.minimum(&(a * q.clamp_tensor(Some(&(center - eps)), Some(&(center + eps)))))
}

/// The mean over pairs of the per-pair loss of `alg` (P3O-V1, P3O-V2, DPO,
/// p3o-trlx, PPG and VPG; RLOO and GRPO as groups of two). PPO is
/// token-level and has its own loss.
pub fn pair_loss(alg: Algorithm, h: &Hyper, b: &PairBatch) -> Result<Tensor, TorchError> {
    let rho = |i: usize| (b.lp[i] - b.lp_old[i]).exp();
    let per_pair = match alg {
        Algorithm::Vpg => {
            let d = |i: usize| {
                (b.reward[i]
                    - (b.lp_old[i].to_kind(Kind::Double) - b.lp_ref[i].to_kind(Kind::Double))
                        * h.beta)
                    .to_kind(b.lp[0].kind())
            };
            -(d(0) * rho(0) + d(1) * rho(1)) / 2.0
        }
        Algorithm::Ppg => {
            let a = (shaped_difference(b, h.beta) * rho(0) * rho(1)).detach();
            -(a * (b.lp[0] - b.lp[1])) / 2.0
        }
        Algorithm::P3oV1 => {
            let d = shaped_difference(b, h.beta);
            let (r0, r1) = (rho(0), rho(1));
            let w0 = (&d * &r1).detach();
            let w1 = (-&d * &r0).detach();
            let one = r0.ones_like();
            -(clipped(&w0, &r0, &one, h.epsilon) + clipped(&w1, &r1, &one, h.epsilon)) / 2.0
        }
        Algorithm::P3oV2 => {
            let a = (shaped_difference(b, h.beta) * rho(0) * rho(1)).detach();
            let l = b.lp[0] - b.lp[1];
            let l_old = b.lp_old[0] - b.lp_old[1];
            -clipped(&a, &l, &l_old, h.epsilon)
        }
        Algorithm::Dpo => {
            let s = (b.reward[0] - b.reward[1])
                .sigmoid()
                .to_kind(b.lp[0].kind());
            let u = ((b.lp[0] - b.lp_ref[0]) - (b.lp[1] - b.lp_ref[1])) * h.beta;
            let not_s: Tensor = 1.0 - &s;
            let neg_u: Tensor = -&u;
            -(&s * u.log_sigmoid() + not_s * neg_u.log_sigmoid())
        }
        Algorithm::Ppo => {
            return Err(TorchError::Input(
                "PPO is token-level, not a pair loss".into(),
            ));
        }
        Algorithm::P3oTrlx => {
            let (a, d, d_old) = trlx_pair_terms(h, b);
            -clipped(&a, &d, &d_old, h.epsilon) / 2.0
        }
        Algorithm::Rloo | Algorithm::Grpo => {
            let cat = |t: &[&Tensor; 2]| Tensor::stack(t, 1);
            let (lp, lp_old, lp_ref, reward) =
                (cat(&b.lp), cat(&b.lp_old), cat(&b.lp_ref), cat(&b.reward));
            let group = GroupBatch {
                lp: &lp,
                lp_old: &lp_old,
                lp_ref: &lp_ref,
                reward: &reward,
            };
            return group_loss(alg, h, &group);
        }
    };
    Ok(per_pair.mean(per_pair.kind()))
}

/// p3o-trlx's constant `A = q w`, its `D = lr_1 - lr_2` (with gradient)
/// and `D_old` ([C-P3O-TRLX]). `q` forms the raw reward difference in
/// float64 first, as [`shaped_difference`] does.
fn trlx_pair_terms(h: &Hyper, b: &PairBatch) -> (Tensor, Tensor, Tensor) {
    let kind = b.lp[0].kind();
    let lr = |i: usize| b.lp[i] - b.lp_ref[i];
    let d = lr(0) - lr(1);
    let q = ((b.reward[0] - b.reward[1]) - d.detach().to_kind(Kind::Double) * h.beta).to_kind(kind);
    let c = h.cliprange_ratio;
    let w = ((b.lp[0] - b.lp_old[0]) + (b.lp[1] - b.lp_old[1]))
        .exp()
        .clamp(1.0 / c, c);
    let a = (q * w).detach();
    let d_old = (b.lp_old[0] - b.lp_ref[0]) - (b.lp_old[1] - b.lp_ref[1]);
    (a, d, d_old)
}

/// A batch of `P` groups of `G` responses: `[P, G]` tensors. `lp` carries
/// gradients; the rest are constants.
pub struct GroupBatch<'a> {
    pub lp: &'a Tensor,
    pub lp_old: &'a Tensor,
    pub lp_ref: &'a Tensor,
    /// float64 rewards.
    pub reward: &'a Tensor,
}

/// The mean over groups of `alg`'s group loss ([C-GROUP]): RLOO's and
/// GRPO's own, the mean of [`pair_loss`] over the pairs of each group for
/// the rest.
pub fn group_loss(alg: Algorithm, h: &Hyper, b: &GroupBatch) -> Result<Tensor, TorchError> {
    let kind = b.lp.kind();
    let rho = (b.lp - b.lp_old).exp();
    let one = rho.ones_like();
    match alg {
        Algorithm::Rloo => {
            let a = rloo_advantages(b, h.beta).to_kind(kind);
            Ok(-clipped(&a, &rho, &one, h.epsilon).mean(kind))
        }
        Algorithm::Grpo => {
            let a = grpo_advantages(b.reward, h).to_kind(kind);
            let mut loss = -clipped(&a, &rho, &one, h.epsilon).mean(kind);
            if h.beta != 0.0 {
                let d = b.lp_ref - b.lp;
                loss += (d.expm1() - d).mean(kind) * h.beta;
            }
            Ok(loss)
        }
        _ => mean_over_pairs(b, |p| pair_loss(alg, h, p)),
    }
}

/// The mean of `pair` over the `G (G - 1) / 2` column pairs `i < j` of a
/// group batch (with `G = 2`, `pair` of its one pair).
pub fn mean_over_pairs<E>(
    b: &GroupBatch,
    mut pair: impl FnMut(&PairBatch) -> Result<Tensor, E>,
) -> Result<Tensor, E> {
    let g = b.lp.size()[1];
    let mut total: Option<Tensor> = None;
    for i in 0..g {
        for j in i + 1..g {
            let col = |t: &Tensor| [t.select(1, i), t.select(1, j)];
            let (lp, lp_old, lp_ref, reward) =
                (col(b.lp), col(b.lp_old), col(b.lp_ref), col(b.reward));
            let l = pair(&PairBatch {
                lp: [&lp[0], &lp[1]],
                lp_old: [&lp_old[0], &lp_old[1]],
                lp_ref: [&lp_ref[0], &lp_ref[1]],
                reward: [&reward[0], &reward[1]],
            })?;
            total = Some(match total {
                None => l,
                Some(t) => t + l,
            });
        }
    }
    let total = total.expect("a group batch has at least two columns");
    if g == 2 {
        return Ok(total);
    }
    Ok(total / (g * (g - 1) / 2) as f64)
}

/// [C-RLOO] in float64: from `e_i = r~_i - r~_1`, whose reward part
/// `r_i - r_1` is formed first (so a shift `delta(x)` cancels before
/// anything else is rounded, as in [`shaped_difference`]),
/// `A_i = e_i - (sum_j e_j - e_i) / (G - 1)`.
fn rloo_advantages(b: &GroupBatch, beta: f64) -> Tensor {
    let g = b.lp.size()[1];
    let kl = b.lp_old.to_kind(Kind::Double) - b.lp_ref.to_kind(Kind::Double);
    let first = |t: &Tensor| t.narrow(1, 0, 1);
    let e = (b.reward - first(b.reward)) - (&kl - first(&kl)) * beta;
    let total = e.sum_dim_intlist([1i64].as_slice(), true, Kind::Double);
    &e - (total - &e) / (g - 1) as f64
}

/// [C-GRPO] in float64, as `crate::reference::group_losses::grpo_advantages`
/// forms it: centred differences `r_i - r_1` over the sample standard
/// deviation plus `std_eps` (all zero where that is 0), or only centred.
fn grpo_advantages(reward: &Tensor, h: &Hyper) -> Tensor {
    let g = reward.size()[1];
    let d = reward - reward.narrow(1, 0, 1);
    let centred = &d - d.mean_dim([1i64].as_slice(), true, Kind::Double);
    if h.scale_rewards == ScaleRewards::None {
        return centred;
    }
    let var = centred
        .square()
        .sum_dim_intlist([1i64].as_slice(), true, Kind::Double)
        / (g - 1) as f64;
    let s = var.sqrt() + h.std_eps;
    let zero = s.eq(0.0);
    (&centred / s.masked_fill(&zero, 1.0)).masked_fill(&zero.expand_as(&centred), 0.0)
}

/// A minibatch of p3o-trlx groups at the token level: `[P, G, L]` token
/// log-probs (zero after padding) and their mask, `[P, G]` sequence
/// log-probs under the reference and float64 rewards.
pub struct TokenGroupBatch<'a> {
    /// With gradients.
    pub lp: &'a Tensor,
    pub lp_old: &'a Tensor,
    pub mask: &'a Tensor,
    pub lp_ref: &'a Tensor,
    pub reward: &'a Tensor,
}

/// [C-P3O-TRLX] with `avg_tokenwise` or `clip_tokenwise`: the sum over
/// every pair of its unhalved loss over `n`, the response tokens of both
/// responses of every pair; the twin of
/// `crate::reference::trlx_tokens::p3o_trlx_tokens`.
pub fn p3o_trlx_token_loss(h: &Hyper, clip_tokenwise: bool, b: &TokenGroupBatch) -> Tensor {
    let kind = b.lp.kind();
    let g = b.lp.size()[1];
    let seq = |t: &Tensor| t.sum_dim_intlist([-1i64].as_slice(), false, kind);
    let (lp, lp_old) = (seq(b.lp), seq(b.lp_old));
    let n = b.mask.sum(kind) * (g - 1) as f64;
    let mut total = lp.zeros_like().sum(kind);
    for i in 0..g {
        for j in i + 1..g {
            let col = |t: &Tensor| [t.select(1, i), t.select(1, j)];
            let (lp_c, old_c, ref_c, rew_c) =
                (col(&lp), col(&lp_old), col(b.lp_ref), col(b.reward));
            let pair = PairBatch {
                lp: [&lp_c[0], &lp_c[1]],
                lp_old: [&old_c[0], &old_c[1]],
                lp_ref: [&ref_c[0], &ref_c[1]],
                reward: [&rew_c[0], &rew_c[1]],
            };
            let (a, d, d_old) = trlx_pair_terms(h, &pair);
            let term = if clip_tokenwise {
                let side = |m: i64, a: &Tensor| {
                    let (x, c) = (b.lp.select(1, m), b.lp_old.select(1, m));
                    clipped(&a.unsqueeze(1), &x, &c, h.epsilon) * b.mask.select(1, m)
                };
                side(i, &a) + side(j, &-&a)
            } else {
                clipped(&a, &d, &d_old, h.epsilon)
            };
            total -= term.sum(kind);
        }
    }
    total / n.clamp_min(1.0)
}

/// A minibatch of PPO rollout rows, `[n, L]` tensors over response tokens
/// (`mask` 1 on real tokens). `lp` and `value` carry gradients.
pub struct PpoBatch<'a> {
    pub lp: &'a Tensor,
    pub value: &'a Tensor,
    pub lp_old: &'a Tensor,
    pub value_old: &'a Tensor,
    pub advantage: &'a Tensor,
    pub ret: &'a Tensor,
    pub mask: &'a Tensor,
}

/// [C-PPO-TOKEN]: clipped surrogate plus clipped value loss, averaged over
/// valid tokens; the twin of `crate::reference::ppo_tokens::ppo_token_loss`.
pub fn ppo_loss(b: &PpoBatch, h: &crate::reference::ppo_tokens::PpoHyper) -> Tensor {
    let kind = b.lp.kind();
    let n = b.mask.sum(kind).clamp_min(1.0);
    let rho = (b.lp - b.lp_old).exp();
    let a = b.advantage;
    let pg = (-a * &rho).maximum(&(-a * rho.clamp(1.0 - h.epsilon, 1.0 + h.epsilon)));
    let clipped_value = b.value.clamp_tensor(
        Some(&(b.value_old - h.value_clip)),
        Some(&(b.value_old + h.value_clip)),
    );
    let e1 = (b.value - b.ret).square();
    let e2 = (clipped_value - b.ret).square();
    let vf = e1.maximum(&e2) * 0.5;
    ((pg + vf * h.vf_coef) * b.mask).sum(kind) / n
}
