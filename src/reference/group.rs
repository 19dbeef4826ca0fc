//! Losses over a group of `G >= 2` responses to one context ([C-GROUP]): the
//! pairwise algorithms average their pair loss over the group's
//! `G (G - 1) / 2` unordered pairs; RLOO and GRPO have group losses.

use super::group_losses::{self, GroupConsts, GroupOutput};
use super::losses::{Algorithm, Hyper, PairConsts, PairVars, pair_surrogate};

/// The differentiable quantities of one group: each response's
/// `log pi(y_i|x)` and the context's PPO value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupVars<'a> {
    pub lp: &'a [f64],
    pub value: f64,
}

/// The surrogate `S(cur; frozen)` of [C-SURROGATE] for one group and its
/// gradient with respect to `cur`.
pub fn group_surrogate(
    alg: Algorithm,
    h: &Hyper,
    c: &GroupConsts,
    cur: GroupVars,
    frozen: GroupVars,
) -> GroupOutput {
    match alg {
        Algorithm::Rloo => group_losses::rloo(c, h.beta, h.epsilon, cur.lp),
        Algorithm::Grpo => group_losses::grpo(c, &h.grpo(), h.epsilon, cur.lp),
        _ => mean_over_pairs(alg, h, c, cur, frozen),
    }
}

/// The mean of `alg`'s pair loss over the pairs `i < j` of the group.
fn mean_over_pairs(
    alg: Algorithm,
    h: &Hyper,
    c: &GroupConsts,
    cur: GroupVars,
    frozen: GroupVars,
) -> GroupOutput {
    let g = c.size();
    let weight = 1.0 / (g * (g - 1) / 2) as f64;
    let mut out = GroupOutput {
        loss: 0.0,
        grad_lp: vec![0.0; g],
        grad_value: 0.0,
    };
    for i in 0..g {
        for j in i + 1..g {
            let consts = PairConsts {
                reward: [c.reward[i], c.reward[j]],
                lp_old: [c.lp_old[i], c.lp_old[j]],
                lp_ref: [c.lp_ref[i], c.lp_ref[j]],
            };
            let vars = |v: GroupVars| PairVars {
                lp: [v.lp[i], v.lp[j]],
                value: v.value,
            };
            let pair = pair_surrogate(alg, h, &consts, vars(cur), vars(frozen));
            out.loss += weight * pair.loss;
            out.grad_lp[i] += weight * pair.grad.lp[0];
            out.grad_lp[j] += weight * pair.grad.lp[1];
            out.grad_value += weight * pair.grad.value;
        }
    }
    out
}
