//! p3o-trlx at the token level ([C-P3O-TRLX]): the authors' token-count
//! normalisation (`avg_tokenwise`) and token-wise clipping
//! (`clip_tokenwise`), over the pairs of groups of token sequences. The
//! float64 twin of `crate::train::losses::p3o_trlx_token_loss`.

use super::clip::clipped_objective;
use super::losses::Hyper;

/// The constants of one group of `G >= 2` token sequences.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenGroup {
    /// Raw rewards, one per response.
    pub reward: Vec<f64>,
    /// `log pi_ref(y_i|x)`, one per response.
    pub lp_ref: Vec<f64>,
    /// `log pi_old` of every token of every response.
    pub lp_old: Vec<Vec<f64>>,
}

/// Which of the authors' token-level options are on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TrlxOptions {
    pub clip_tokenwise: bool,
    pub avg_tokenwise: bool,
}

/// A minibatch loss and its gradient with respect to every token log-prob
/// (`grad[group][response][token]`).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLoss {
    pub loss: f64,
    pub grad: Vec<Vec<Vec<f64>>>,
}

/// The minibatch loss of p3o-trlx at the token log-probs `lp` (same shape
/// as the groups' `lp_old`). With neither option it is the mean over groups
/// of the mean over their pairs of the sequence pair loss ([C-GROUP]);
/// otherwise the sum over all pairs of the pair's unhalved loss over `n`,
/// the response tokens of both responses of every pair.
pub fn p3o_trlx_tokens(
    h: &Hyper,
    o: TrlxOptions,
    groups: &[TokenGroup],
    lp: &[Vec<Vec<f64>>],
) -> TokenLoss {
    p3o_trlx_token_surrogate(h, o, groups, lp, lp)
}

/// The surrogate of [C-SURROGATE]: the loss at `lp` with its
/// stop-gradient factors `q` and `w` evaluated at `frozen`.
pub fn p3o_trlx_token_surrogate(
    h: &Hyper,
    o: TrlxOptions,
    groups: &[TokenGroup],
    lp: &[Vec<Vec<f64>>],
    frozen: &[Vec<Vec<f64>>],
) -> TokenLoss {
    let mut grad: Vec<Vec<Vec<f64>>> = lp
        .iter()
        .map(|g| g.iter().map(|r| vec![0.0; r.len()]).collect())
        .collect();
    let token_level = o.clip_tokenwise || o.avg_tokenwise;
    let n: usize = groups
        .iter()
        .map(|g| (g.reward.len() - 1) * g.lp_old.iter().map(Vec::len).sum::<usize>())
        .sum();
    let mut loss = 0.0;
    for (k, g) in groups.iter().enumerate() {
        let size = g.reward.len();
        // Each of the group's pair terms enters the loss with this weight.
        let weight = if token_level {
            1.0 / n.max(1) as f64
        } else {
            0.5 / (groups.len() * size * (size - 1) / 2) as f64
        };
        let seq = |v: &[f64]| v.iter().sum::<f64>();
        let lp_seq: Vec<f64> = lp[k].iter().map(|r| seq(r)).collect();
        let frozen_seq: Vec<f64> = frozen[k].iter().map(|r| seq(r)).collect();
        let old_seq: Vec<f64> = g.lp_old.iter().map(|r| seq(r)).collect();
        for i in 0..g.reward.len() {
            for j in i + 1..g.reward.len() {
                let lr = |s: &[f64], m: usize| s[m] - g.lp_ref[m];
                let q = (g.reward[i] - g.reward[j])
                    - h.beta * (lr(&frozen_seq, i) - lr(&frozen_seq, j));
                let rho = (frozen_seq[i] - old_seq[i]).exp() * (frozen_seq[j] - old_seq[j]).exp();
                let a = q * rho.max(1.0 / h.cliprange_ratio).min(h.cliprange_ratio);
                if o.clip_tokenwise {
                    // Response i with weight A and response j with -A, each
                    // token clipped around its behaviour log-prob.
                    for (m, sign) in [(i, 1.0), (j, -1.0)] {
                        for (t, &x) in lp[k][m].iter().enumerate() {
                            let c = g.lp_old[m][t];
                            let (value, passes) =
                                clipped_objective(sign * a, x, c - h.epsilon, c + h.epsilon);
                            loss -= weight * value;
                            if passes {
                                grad[k][m][t] -= weight * sign * a;
                            }
                        }
                    }
                } else {
                    let d = lr(&lp_seq, i) - lr(&lp_seq, j);
                    let d_old = lr(&old_seq, i) - lr(&old_seq, j);
                    let (value, passes) =
                        clipped_objective(a, d, d_old - h.epsilon, d_old + h.epsilon);
                    loss -= weight * value;
                    if passes {
                        for (m, sign) in [(i, 1.0), (j, -1.0)] {
                            for v in &mut grad[k][m] {
                                *v -= weight * sign * a;
                            }
                        }
                    }
                }
            }
        }
    }
    TokenLoss { loss, grad }
}
