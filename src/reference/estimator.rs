//! Sampled and exact estimators over a tabular contextual bandit
//! ([C-EXPECTATION]), chained to logit gradients by [C-SOFTMAX].

use ndarray::{Array1, Array2, ArrayView2};
use rand::Rng;

use super::losses::{Algorithm, Hyper, PairConsts, PairVars, pair_surrogate};
use super::policy::log_softmax;

/// One sampled pair: a context and two response indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub x: usize,
    pub y1: usize,
    pub y2: usize,
}

/// Which estimator of [C-EXPECTATION] to evaluate.
#[derive(Clone, Debug, PartialEq)]
pub enum Batch {
    /// The exact expectation over `y1, y2 ~ pi_old`, contexts uniform.
    Exact,
    /// The average over these pairs.
    Sampled(Vec<Pair>),
}

/// Everything an algorithm's loss depends on besides its differentiable
/// arguments. Shapes are checked by the caller (see `crate::case`).
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// `theta`, the trained policy, `[X, K]`.
    pub logits: Array2<f64>,
    /// `theta_old`, the behaviour policy.
    pub logits_old: Array2<f64>,
    /// `theta_ref`, the reference policy.
    pub logits_ref: Array2<f64>,
    /// `r(x, y)`.
    pub rewards: Array2<f64>,
    /// `V[x]`, PPO only.
    pub value: Option<Array1<f64>>,
}

impl Problem {
    pub fn contexts(&self) -> usize {
        self.logits.nrows()
    }

    pub fn actions(&self) -> usize {
        self.logits.ncols()
    }
}

/// A loss and its gradients with respect to the logits and the value table.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub grad: Array2<f64>,
    /// `d loss / d V`, present when the problem has a value table.
    pub grad_value: Option<Array1<f64>>,
}

/// The loss and its analytic gradient at `problem.logits` (and
/// `problem.value`).
pub fn evaluate(alg: Algorithm, h: &Hyper, problem: &Problem, batch: &Batch) -> Evaluation {
    surrogate(
        alg,
        h,
        problem,
        batch,
        problem.logits.view(),
        problem.value.as_ref(),
    )
}

/// The surrogate `S(theta; theta_bar)` of [C-SURROGATE] with
/// `theta_bar = problem.logits` (and `problem.value`), evaluated at `theta`
/// and `value`, with its gradient with respect to `theta` and `value`.
pub fn surrogate(
    alg: Algorithm,
    h: &Hyper,
    problem: &Problem,
    batch: &Batch,
    theta: ArrayView2<f64>,
    value: Option<&Array1<f64>>,
) -> Evaluation {
    let lp_frozen = log_softmax(problem.logits.view());
    let lp_cur = log_softmax(theta);
    let lp_old = log_softmax(problem.logits_old.view());
    let lp_ref = log_softmax(problem.logits_ref.view());
    let (x_count, k) = (problem.contexts(), problem.actions());

    let mut loss = 0.0;
    // d loss / d lp(x, y), accumulated over every pair that uses (x, y).
    let mut grad_lp = Array2::<f64>::zeros((x_count, k));
    let mut grad_value = value.map(|v| Array1::<f64>::zeros(v.len()));

    let mut add = |pair: Pair, weight: f64| {
        let Pair { x, y1, y2 } = pair;
        let consts = PairConsts {
            reward: [problem.rewards[[x, y1]], problem.rewards[[x, y2]]],
            lp_old: [lp_old[[x, y1]], lp_old[[x, y2]]],
            lp_ref: [lp_ref[[x, y1]], lp_ref[[x, y2]]],
        };
        let vars = |lp: &Array2<f64>, v: Option<&Array1<f64>>| PairVars {
            lp: [lp[[x, y1]], lp[[x, y2]]],
            value: v.map_or(0.0, |v| v[x]),
        };
        let out = pair_surrogate(
            alg,
            h,
            &consts,
            vars(&lp_cur, value),
            vars(&lp_frozen, problem.value.as_ref()),
        );
        loss += weight * out.loss;
        grad_lp[[x, y1]] += weight * out.grad.lp[0];
        grad_lp[[x, y2]] += weight * out.grad.lp[1];
        if let Some(g) = grad_value.as_mut() {
            g[x] += weight * out.grad.value;
        }
    };

    match batch {
        Batch::Sampled(pairs) => {
            let w = 1.0 / pairs.len() as f64;
            for &p in pairs {
                add(p, w);
            }
        }
        Batch::Exact => {
            let p_old = lp_old.mapv(f64::exp);
            for x in 0..x_count {
                for y1 in 0..k {
                    for y2 in 0..k {
                        let w = p_old[[x, y1]] * p_old[[x, y2]] / x_count as f64;
                        add(Pair { x, y1, y2 }, w);
                    }
                }
            }
        }
    }

    Evaluation {
        loss,
        grad: chain_to_logits(&grad_lp, &lp_cur),
        grad_value,
    }
}

/// [C-SOFTMAX]: `d/d theta[x,k] = g[x,k] - pi(k|x) sum_y g[x,y]`.
fn chain_to_logits(grad_lp: &Array2<f64>, lp: &Array2<f64>) -> Array2<f64> {
    let mut out = grad_lp.clone();
    for (mut row, lp_row) in out.rows_mut().into_iter().zip(lp.rows()) {
        let total = row.sum();
        row.zip_mut_with(&lp_row, |g, &l| *g -= total * l.exp());
    }
    out
}

/// Draws `y ~ pi(.|x)` from one row of probabilities by inversion.
pub fn sample_action<R: Rng + ?Sized>(probs: ndarray::ArrayView1<f64>, rng: &mut R) -> usize {
    let u: f64 = rng.random();
    let mut acc = 0.0;
    for (y, &p) in probs.iter().enumerate() {
        acc += p;
        if u < acc {
            return y;
        }
    }
    probs.len() - 1
}

/// Draws `n` pairs: context `x_of(i)`, both responses independently from the
/// behaviour policy `probs_old`.
pub fn sample_pairs<R: Rng + ?Sized>(
    probs_old: &Array2<f64>,
    n: usize,
    x_of: impl Fn(usize, &mut R) -> usize,
    rng: &mut R,
) -> Vec<Pair> {
    (0..n)
        .map(|i| {
            let x = x_of(i, rng);
            let y1 = sample_action(probs_old.row(x), rng);
            let y2 = sample_action(probs_old.row(x), rng);
            Pair { x, y1, y2 }
        })
        .collect()
}
