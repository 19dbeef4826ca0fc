//! Per-pair losses of every algorithm as functions of the two sequence
//! log-probabilities (and the PPO value), with their analytic gradients.
//!
//! These are the float64 twins of the fast paths: a tch loss or a CUDA pair
//! kernel is checked against [`pair_loss`]. Each loss is a surrogate in the
//! sense of [C-SURROGATE]: stop-gradient factors are evaluated at `frozen`,
//! everything else at `cur`.

use std::fmt;

pub use super::clip::clipped_objective;
use super::clip::ratio_band;
use super::group_losses::{self, GroupConsts, GrpoSettings, ScaleRewards};

/// The algorithms of the reference ([C-VPG] .. [C-PPO], [C-RLOO],
/// [C-GRPO], [C-P3O-TRLX]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Vpg,
    Ppg,
    P3oV1,
    P3oV2,
    Dpo,
    Ppo,
    Rloo,
    Grpo,
    P3oTrlx,
}

impl Algorithm {
    pub const ALL: [Algorithm; 9] = [
        Algorithm::Vpg,
        Algorithm::Ppg,
        Algorithm::P3oV1,
        Algorithm::P3oV2,
        Algorithm::Dpo,
        Algorithm::Ppo,
        Algorithm::Rloo,
        Algorithm::Grpo,
        Algorithm::P3oTrlx,
    ];

    /// The name used on the command line and in JSON cases.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Vpg => "vpg",
            Algorithm::Ppg => "ppg",
            Algorithm::P3oV1 => "p3o-v1",
            Algorithm::P3oV2 => "p3o-v2",
            Algorithm::Dpo => "dpo",
            Algorithm::Ppo => "ppo",
            Algorithm::Rloo => "rloo",
            Algorithm::Grpo => "grpo",
            Algorithm::P3oTrlx => "p3o-trlx",
        }
    }

    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether the algorithm learns a value table (only PPO, [C-PPO]).
    pub fn uses_value(self) -> bool {
        self == Algorithm::Ppo
    }

    /// Whether a group's loss is the mean of a pair loss over its pairs
    /// ([C-GROUP]); RLOO and GRPO have group losses of their own.
    pub fn is_pairwise(self) -> bool {
        !matches!(self, Algorithm::Rloo | Algorithm::Grpo)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Hyper-parameters shared by all algorithms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    /// KL coefficient of the shaped reward ([C-SHAPED-REWARD]); DPO's
    /// inverse temperature ([C-DPO]); GRPO's k3 weight ([C-GRPO]).
    pub beta: f64,
    /// Clip half-width ([C-CLIP]); `f64::INFINITY` disables clipping.
    pub epsilon: f64,
    /// Weight of PPO's value loss ([C-PPO]).
    pub vf_coef: f64,
    /// p3o-trlx's bound `c > 1` on its importance weight ([C-P3O-TRLX]);
    /// `f64::INFINITY` leaves it unbounded.
    pub cliprange_ratio: f64,
    /// GRPO's reward scaling ([C-GRPO]).
    pub scale_rewards: ScaleRewards,
    /// Added to GRPO's standard deviation ([C-GRPO]).
    pub std_eps: f64,
}

impl Default for Hyper {
    fn default() -> Self {
        Hyper {
            beta: 0.0,
            epsilon: 0.2,
            vf_coef: 1.0,
            cliprange_ratio: 10.0,
            scale_rewards: ScaleRewards::Group,
            std_eps: 0.0,
        }
    }
}

impl Hyper {
    /// GRPO's settings besides `epsilon`.
    pub fn grpo(&self) -> GrpoSettings {
        GrpoSettings {
            beta: self.beta,
            scale: self.scale_rewards,
            std_eps: self.std_eps,
        }
    }
}

/// The constants of one sampled pair: rewards and the log-probabilities of
/// both responses under the behaviour and reference policies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairConsts {
    pub reward: [f64; 2],
    pub lp_old: [f64; 2],
    pub lp_ref: [f64; 2],
}

impl PairConsts {
    /// `r~_i` of [C-SHAPED-REWARD].
    pub fn shaped_reward(&self, beta: f64) -> [f64; 2] {
        [0, 1].map(|i| self.reward[i] - beta * (self.lp_old[i] - self.lp_ref[i]))
    }
}

/// The differentiable quantities of one pair: `log pi(y_i|x)` and `V[x]`.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct PairVars {
    pub lp: [f64; 2],
    pub value: f64,
}

/// A surrogate value and its gradient with respect to [`PairVars`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairOutput {
    pub loss: f64,
    pub grad: PairVars,
}

/// The loss of one pair at `at` (stop-gradients evaluated at the same point).
pub fn pair_loss(alg: Algorithm, h: &Hyper, c: &PairConsts, at: PairVars) -> PairOutput {
    pair_surrogate(alg, h, c, at, at)
}

/// The surrogate `S(cur; frozen)` of [C-SURROGATE] and its gradient with
/// respect to `cur`.
pub fn pair_surrogate(
    alg: Algorithm,
    h: &Hyper,
    c: &PairConsts,
    cur: PairVars,
    frozen: PairVars,
) -> PairOutput {
    match alg {
        Algorithm::Vpg => vpg(h, c, cur),
        Algorithm::Ppg => ppg(h, c, cur, frozen),
        Algorithm::P3oV1 => p3o_v1(h, c, cur, frozen),
        Algorithm::P3oV2 => p3o_v2(h, c, cur, frozen),
        Algorithm::Dpo => dpo(h, c, cur),
        Algorithm::Ppo => ppo(h, c, cur, frozen),
        Algorithm::Rloo | Algorithm::Grpo => group_of_two(alg, h, c, cur),
        Algorithm::P3oTrlx => p3o_trlx(h, c, cur, frozen),
    }
}

/// RLOO and GRPO on a pair: their group losses with `G = 2` ([C-GROUP]).
fn group_of_two(alg: Algorithm, h: &Hyper, c: &PairConsts, cur: PairVars) -> PairOutput {
    let consts = GroupConsts {
        reward: c.reward.to_vec(),
        lp_old: c.lp_old.to_vec(),
        lp_ref: c.lp_ref.to_vec(),
    };
    let out = match alg {
        Algorithm::Rloo => group_losses::rloo(&consts, h.beta, h.epsilon, &cur.lp),
        _ => group_losses::grpo(&consts, &h.grpo(), h.epsilon, &cur.lp),
    };
    PairOutput {
        loss: out.loss,
        grad: PairVars {
            lp: [out.grad_lp[0], out.grad_lp[1]],
            value: 0.0,
        },
    }
}

fn ratios(c: &PairConsts, v: PairVars) -> [f64; 2] {
    [0, 1].map(|i| (v.lp[i] - c.lp_old[i]).exp())
}

/// [C-VPG]: `-(r~1 rho1 + r~2 rho2) / 2`.
fn vpg(h: &Hyper, c: &PairConsts, cur: PairVars) -> PairOutput {
    let r = c.shaped_reward(h.beta);
    let rho = ratios(c, cur);
    let term = [0, 1].map(|i| -r[i] * rho[i] / 2.0);
    PairOutput {
        loss: term[0] + term[1],
        grad: PairVars {
            lp: term,
            value: 0.0,
        },
    }
}

/// `D rho1 rho2` at the frozen point: the stop-gradient weight of [C-PPG]
/// and [C-P3O-V2].
fn pair_weight(h: &Hyper, c: &PairConsts, frozen: PairVars) -> f64 {
    let r = c.shaped_reward(h.beta);
    let rho = ratios(c, frozen);
    (r[0] - r[1]) * rho[0] * rho[1]
}

/// [C-PPG]: `-sg(D rho1 rho2) (lp1 - lp2) / 2`.
fn ppg(h: &Hyper, c: &PairConsts, cur: PairVars, frozen: PairVars) -> PairOutput {
    let a = pair_weight(h, c, frozen) / 2.0;
    PairOutput {
        loss: -a * (cur.lp[0] - cur.lp[1]),
        grad: PairVars {
            lp: [-a, a],
            value: 0.0,
        },
    }
}

/// [C-P3O-V1]: each ratio clipped separately, weights `sg(D rho2)` and
/// `sg(-D rho1)`.
fn p3o_v1(h: &Hyper, c: &PairConsts, cur: PairVars, frozen: PairVars) -> PairOutput {
    let r = c.shaped_reward(h.beta);
    let d = r[0] - r[1];
    let rho_bar = ratios(c, frozen);
    let rho = ratios(c, cur);
    let weight = [d * rho_bar[1], -d * rho_bar[0]];
    let (lo, hi) = ratio_band(h.epsilon);
    let mut loss = 0.0;
    let mut grad = [0.0; 2];
    for i in 0..2 {
        let (value, passes) = clipped_objective(weight[i], rho[i], lo, hi);
        loss -= value / 2.0;
        if passes {
            grad[i] = -weight[i] * rho[i] / 2.0;
        }
    }
    PairOutput {
        loss,
        grad: PairVars {
            lp: grad,
            value: 0.0,
        },
    }
}

/// [C-P3O-V2]: the log-ratio `lp1 - lp2` clipped jointly around its
/// behaviour-policy value, weight `sg(D rho1 rho2)`, no factor 1/2.
fn p3o_v2(h: &Hyper, c: &PairConsts, cur: PairVars, frozen: PairVars) -> PairOutput {
    let a = pair_weight(h, c, frozen);
    let l = cur.lp[0] - cur.lp[1];
    let l_old = c.lp_old[0] - c.lp_old[1];
    let (value, passes) = clipped_objective(a, l, l_old - h.epsilon, l_old + h.epsilon);
    let g = if passes { a } else { 0.0 };
    PairOutput {
        loss: -value,
        grad: PairVars {
            lp: [-g, g],
            value: 0.0,
        },
    }
}

/// `log sigma(u)`, stable for large `|u|`.
pub fn log_sigmoid(u: f64) -> f64 {
    -softplus(-u)
}

/// `log(1 + exp(v)) = max(v, 0) + log(1 + exp(-|v|))`, stable for large
/// `|v|` (the exponential never exceeds 1).
pub fn softplus(v: f64) -> f64 {
    v.max(0.0) + (-v.abs()).exp().ln_1p()
}

/// `1 / (1 + exp(-u))`, stable for large `|u|`.
pub fn sigmoid(u: f64) -> f64 {
    if u >= 0.0 {
        1.0 / (1.0 + (-u).exp())
    } else {
        let e = u.exp();
        e / (1.0 + e)
    }
}

/// DPO's margin `u = beta ((lp1 - lp_ref1) - (lp2 - lp_ref2))` ([C-DPO]).
pub fn dpo_margin(beta: f64, c: &PairConsts, v: PairVars) -> f64 {
    beta * ((v.lp[0] - c.lp_ref[0]) - (v.lp[1] - c.lp_ref[1]))
}

/// [C-DPO]: the label-weighted DPO loss with `s = sigma(r1 - r2)` on the raw
/// rewards.
fn dpo(h: &Hyper, c: &PairConsts, cur: PairVars) -> PairOutput {
    let s = sigmoid(c.reward[0] - c.reward[1]);
    let u = dpo_margin(h.beta, c, cur);
    let loss = -(s * log_sigmoid(u) + (1.0 - s) * log_sigmoid(-u));
    let g = h.beta * (sigmoid(u) - s);
    PairOutput {
        loss,
        grad: PairVars {
            lp: [g, -g],
            value: 0.0,
        },
    }
}

/// [C-PPO]: two single-response samples of weight 1/2, advantage
/// `r~ - sg(V)`, clipped ratio, and the value regression.
fn ppo(h: &Hyper, c: &PairConsts, cur: PairVars, frozen: PairVars) -> PairOutput {
    let r = c.shaped_reward(h.beta);
    let rho = ratios(c, cur);
    let (lo, hi) = ratio_band(h.epsilon);
    let mut loss = 0.0;
    let mut grad = PairVars::default();
    for i in 0..2 {
        let adv = r[i] - frozen.value;
        let (value, passes) = clipped_objective(adv, rho[i], lo, hi);
        let err = cur.value - r[i];
        loss += 0.5 * (-value + h.vf_coef * err * err / 2.0);
        if passes {
            grad.lp[i] = -0.5 * adv * rho[i];
        }
        grad.value += 0.5 * h.vf_coef * err;
    }
    PairOutput { loss, grad }
}

/// [C-P3O-TRLX]: the authors' sequence-mode loss. With `lr_i = lp_i - lp_ref_i`,
/// `q = sg[(r1 - r2) - beta (lr1 - lr2)]` on the raw rewards,
/// `w = clamp(sg[rho1 rho2], 1/c, c)` and `D = lr1 - lr2` clipped around its
/// behaviour-policy value: `-(1/2) min(q w D, q w clip(D, D_old - eps, D_old + eps))`.
fn p3o_trlx(h: &Hyper, c: &PairConsts, cur: PairVars, frozen: PairVars) -> PairOutput {
    let lr = |v: PairVars, i: usize| v.lp[i] - c.lp_ref[i];
    let q = (c.reward[0] - c.reward[1]) - h.beta * (lr(frozen, 0) - lr(frozen, 1));
    let rho = ratios(c, frozen);
    let w = (rho[0] * rho[1])
        .max(1.0 / h.cliprange_ratio)
        .min(h.cliprange_ratio);
    let a = q * w;
    let d = lr(cur, 0) - lr(cur, 1);
    let d_old = (c.lp_old[0] - c.lp_ref[0]) - (c.lp_old[1] - c.lp_ref[1]);
    let (value, passes) = clipped_objective(a, d, d_old - h.epsilon, d_old + h.epsilon);
    let g = if passes { a / 2.0 } else { 0.0 };
    PairOutput {
        loss: -value / 2.0,
        grad: PairVars {
            lp: [-g, g],
            value: 0.0,
        },
    }
}
