//! The group-baseline losses, RLOO ([C-RLOO]) and GRPO ([C-GRPO]): each
//! response's advantage is its reward against the rest of its group, and
//! each response is a single-sample term with a clipped ratio.
//!
//! The advantages depend on rewards and the behaviour and reference
//! policies only, so these losses have no stop-gradient point: the
//! surrogate of [C-SURROGATE] is the loss itself.

use super::clip::{clipped_objective, ratio_band};

/// How GRPO scales its centred rewards ([C-GRPO]).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ScaleRewards {
    /// Divide by the group's sample standard deviation (plus `std_eps`).
    #[default]
    Group,
    /// Centre only.
    None,
}

impl ScaleRewards {
    pub const ALL: [ScaleRewards; 2] = [ScaleRewards::Group, ScaleRewards::None];

    /// The name used in JSON cases and config files.
    pub fn name(self) -> &'static str {
        match self {
            ScaleRewards::Group => "group",
            ScaleRewards::None => "none",
        }
    }

    pub fn from_name(name: &str) -> Option<ScaleRewards> {
        ScaleRewards::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The constants of one group of `G >= 2` responses to one context:
/// rewards and log-probabilities under the behaviour and reference policies.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupConsts {
    pub reward: Vec<f64>,
    pub lp_old: Vec<f64>,
    pub lp_ref: Vec<f64>,
}

impl GroupConsts {
    pub fn size(&self) -> usize {
        self.reward.len()
    }

    /// `r~_i` of [C-SHAPED-REWARD].
    pub fn shaped_reward(&self, beta: f64) -> Vec<f64> {
        (0..self.size())
            .map(|i| self.reward[i] - beta * (self.lp_old[i] - self.lp_ref[i]))
            .collect()
    }
}

/// A group loss and its gradient with respect to each response's
/// `log pi(y_i|x)` (and the PPO value, for pairwise PPO over a group).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupOutput {
    pub loss: f64,
    pub grad_lp: Vec<f64>,
    pub grad_value: f64,
}

/// [C-RLOO]: `A_i = r~_i - (1/(G-1)) sum_{j != i} r~_j`, formed as
/// `r~_i - (S - r~_i) / (G - 1)` with `S` the group's sum.
pub fn rloo_advantages(shaped: &[f64]) -> Vec<f64> {
    let g = shaped.len() as f64;
    let total: f64 = shaped.iter().sum();
    shaped
        .iter()
        .map(|&r| r - (total - r) / (g - 1.0))
        .collect()
}

/// [C-GRPO]: the rewards centred on their group mean and, with
/// [`ScaleRewards::Group`], divided by the sample standard deviation plus
/// `std_eps` (every advantage 0 where that is 0). Everything is formed from
/// the differences `d_i = r_i - r_1`, so a group of equal rewards has
/// advantages exactly 0.
pub fn grpo_advantages(rewards: &[f64], scale: ScaleRewards, std_eps: f64) -> Vec<f64> {
    let g = rewards.len() as f64;
    let d: Vec<f64> = rewards.iter().map(|&r| r - rewards[0]).collect();
    let mean = d.iter().sum::<f64>() / g;
    let centred: Vec<f64> = d.iter().map(|&v| v - mean).collect();
    match scale {
        ScaleRewards::None => centred,
        ScaleRewards::Group => {
            let var = centred.iter().map(|v| v * v).sum::<f64>() / (g - 1.0);
            let s = var.sqrt() + std_eps;
            if s == 0.0 {
                vec![0.0; centred.len()]
            } else {
                centred.iter().map(|&v| v / s).collect()
            }
        }
    }
}

/// `-(1/G) sum_i min(A_i rho_i, A_i clip(rho_i, 1-eps, 1+eps))` and its
/// gradient `-(1/G) A_i rho_i` per response, zero where [C-CLIP] clips.
fn clipped_group_term(adv: &[f64], epsilon: f64, lp: &[f64], lp_old: &[f64]) -> GroupOutput {
    let g = adv.len() as f64;
    let (lo, hi) = ratio_band(epsilon);
    let mut loss = 0.0;
    let mut grad_lp = vec![0.0; adv.len()];
    for i in 0..adv.len() {
        let rho = (lp[i] - lp_old[i]).exp();
        let (value, passes) = clipped_objective(adv[i], rho, lo, hi);
        loss -= value / g;
        if passes {
            grad_lp[i] = -adv[i] * rho / g;
        }
    }
    GroupOutput {
        loss,
        grad_lp,
        grad_value: 0.0,
    }
}

/// [C-RLOO]: the group loss at `lp` (the current `log pi(y_i|x)`).
pub fn rloo(c: &GroupConsts, beta: f64, epsilon: f64, lp: &[f64]) -> GroupOutput {
    let adv = rloo_advantages(&c.shaped_reward(beta));
    clipped_group_term(&adv, epsilon, lp, &c.lp_old)
}

/// The settings of GRPO besides the clip half-width.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GrpoSettings {
    /// The coefficient of the k3 KL estimate.
    pub beta: f64,
    pub scale: ScaleRewards,
    pub std_eps: f64,
}

/// [C-GRPO]: the clipped term on the raw-reward advantages plus
/// `beta k3_i / G`, `k3_i = exp(d_i) - d_i - 1` with
/// `d_i = log pi_ref(y_i) - log pi(y_i)` at `lp`, whose gradient with respect
/// to `log pi(y_i)` is `1 - exp(d_i)`.
pub fn grpo(c: &GroupConsts, s: &GrpoSettings, epsilon: f64, lp: &[f64]) -> GroupOutput {
    let adv = grpo_advantages(&c.reward, s.scale, s.std_eps);
    let mut out = clipped_group_term(&adv, epsilon, lp, &c.lp_old);
    if s.beta != 0.0 {
        let g = lp.len() as f64;
        for i in 0..lp.len() {
            // exp(d) - 1 as exp_m1, so that a small d keeps its digits.
            let d = c.lp_ref[i] - lp[i];
            let em1 = d.exp_m1();
            out.loss += s.beta * (em1 - d) / g;
            out.grad_lp[i] -= s.beta * em1 / g;
        }
    }
    out
}
