//! The training losses on tch tensors, one function per algorithm, each the
//! batch mean of its per-pair loss in `crate::reference::losses` (the same
//! clause, the same stop-gradients via `detach`). Rewards arrive as float64
//! and their differences are formed in float64 before any cast
//! ([C-SHAPED-REWARD], [C-THM2]).

use tch::{Kind, Tensor};

use crate::reference::{Algorithm, Hyper};
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

/// The mean over pairs of the per-pair loss of `alg` (P3O-V1, P3O-V2 or
/// DPO; PPG and VPG too). PPO is token-level and has its own loss.
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
        Algorithm::Rloo | Algorithm::Grpo | Algorithm::P3oTrlx => {
            return Err(TorchError::Input(format!(
                "{alg} has no tch pair loss yet (the float64 reference has it)"
            )));
        }
    };
    Ok(per_pair.mean(per_pair.kind()))
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
