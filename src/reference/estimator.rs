//! Sampled and exact estimators over a tabular contextual bandit
//! ([C-EXPECTATION]), chained to logit gradients by [C-SOFTMAX].

use ndarray::{Array1, Array2, ArrayView2};
use rand::Rng;

use super::group::{GroupVars, group_surrogate};
use super::group_losses::GroupConsts;
use super::losses::{Algorithm, Hyper};
use super::policy::log_softmax;

/// One sampled pair: a context and two response indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub x: usize,
    pub y1: usize,
    pub y2: usize,
}

/// One sampled group ([C-GROUP]): a context and `G >= 2` response indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub x: usize,
    pub ys: Vec<usize>,
}

impl From<Pair> for Group {
    fn from(p: Pair) -> Group {
        Group {
            x: p.x,
            ys: vec![p.y1, p.y2],
        }
    }
}

/// Which estimator of [C-EXPECTATION] / [C-GROUP] to evaluate.
#[derive(Clone, Debug, PartialEq)]
pub enum Batch {
    /// The exact expectation over `y1, y2 ~ pi_old`, contexts uniform.
    Exact,
    /// The average over these pairs (groups of two).
    Sampled(Vec<Pair>),
    /// The exact expectation over groups `y_1..y_G ~ pi_old`, contexts
    /// uniform; `ExactGroups(2)` is [`Batch::Exact`].
    ExactGroups(usize),
    /// The uniform average over these groups.
    Groups(Vec<Group>),
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
    // d loss / d lp(x, y), accumulated over every group that uses (x, y).
    let mut grad_lp = Array2::<f64>::zeros((x_count, k));
    let mut grad_value = value.map(|v| Array1::<f64>::zeros(v.len()));

    let mut add = |x: usize, ys: &[usize], weight: f64| {
        let pick = |t: &Array2<f64>| -> Vec<f64> { ys.iter().map(|&y| t[[x, y]]).collect() };
        let consts = GroupConsts {
            reward: pick(&problem.rewards),
            lp_old: pick(&lp_old),
            lp_ref: pick(&lp_ref),
        };
        let (cur, frozen) = (pick(&lp_cur), pick(&lp_frozen));
        let out = group_surrogate(
            alg,
            h,
            &consts,
            GroupVars {
                lp: &cur,
                value: value.map_or(0.0, |v| v[x]),
            },
            GroupVars {
                lp: &frozen,
                value: problem.value.as_ref().map_or(0.0, |v| v[x]),
            },
        );
        loss += weight * out.loss;
        for (&y, &g) in ys.iter().zip(&out.grad_lp) {
            grad_lp[[x, y]] += weight * g;
        }
        if let Some(gv) = grad_value.as_mut() {
            gv[x] += weight * out.grad_value;
        }
    };

    match batch {
        Batch::Sampled(pairs) => {
            let w = 1.0 / pairs.len() as f64;
            for p in pairs {
                add(p.x, &[p.y1, p.y2], w);
            }
        }
        Batch::Groups(groups) => {
            let w = 1.0 / groups.len() as f64;
            for group in groups {
                add(group.x, &group.ys, w);
            }
        }
        Batch::Exact | Batch::ExactGroups(_) => {
            let g = match batch {
                Batch::ExactGroups(g) => *g,
                _ => 2,
            };
            let p_old = lp_old.mapv(f64::exp);
            for x in 0..x_count {
                for ys in all_groups(k, g) {
                    let w = ys.iter().map(|&y| p_old[[x, y]]).product::<f64>() / x_count as f64;
                    add(x, &ys, w);
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

/// Every `ys` in `0..k` to the power `g`, in lexicographic order.
fn all_groups(k: usize, g: usize) -> impl Iterator<Item = Vec<usize>> {
    let total = (k as u64).pow(g as u32);
    (0..total).map(move |mut n| {
        let mut ys = vec![0; g];
        for slot in ys.iter_mut().rev() {
            *slot = (n % k as u64) as usize;
            n /= k as u64;
        }
        ys
    })
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

/// Draws `n` groups of `g` responses: context `x_of(i)`, every response
/// independently from the behaviour policy `probs_old`.
pub fn sample_groups<R: Rng + ?Sized>(
    probs_old: &Array2<f64>,
    n: usize,
    g: usize,
    x_of: impl Fn(usize, &mut R) -> usize,
    rng: &mut R,
) -> Vec<Group> {
    (0..n)
        .map(|i| {
            let x = x_of(i, rng);
            let ys = (0..g)
                .map(|_| sample_action(probs_old.row(x), rng))
                .collect();
            Group { x, ys }
        })
        .collect()
}
