//! Softmax policies over a logit table and their exact metrics.

use ndarray::{Array2, ArrayView1, ArrayView2, Axis};

/// Row-wise `log softmax` of a logit table ([C-SOFTMAX]), formed as
/// `(v - max) - ln sum_k exp(v_k - max)`: right to float64 rounding for
/// finite logits of any magnitude. (`v - (max + ln sum)` is not: at
/// `max = 1e16` the sum `max + ln 2` rounds back to `max`, and a row
/// `[1e16, 1e16, 0]` would get log-probabilities `[0, 0, -1e16]`.)
pub fn log_softmax(logits: ArrayView2<f64>) -> Array2<f64> {
    let mut out = logits.to_owned();
    for mut row in out.axis_iter_mut(Axis(0)) {
        let (max, log_sum) = split_logsumexp(row.view());
        row.mapv_inplace(|v| (v - max) - log_sum);
    }
    out
}

/// `(max, ln sum_k exp(v_k - max))` of a row, kept apart so that
/// [`log_softmax`] can subtract the two one at a time. A row whose maximum
/// is not finite gives `(max, 0)`.
fn split_logsumexp(row: ArrayView1<f64>) -> (f64, f64) {
    let max = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
    if !max.is_finite() {
        return (max, 0.0);
    }
    (max, row.iter().map(|&v| (v - max).exp()).sum::<f64>().ln())
}

/// `pi(y|x)` for every cell of a logit table.
pub fn probabilities(logits: ArrayView2<f64>) -> Array2<f64> {
    log_softmax(logits).mapv(f64::exp)
}

/// Exact `(1/X) sum_x KL(pi(.|x) || pi_ref(.|x))` ([C-METRICS]).
pub fn mean_kl(logits: ArrayView2<f64>, logits_ref: ArrayView2<f64>) -> f64 {
    let lp = log_softmax(logits);
    let lp_ref = log_softmax(logits_ref);
    let total: f64 = lp
        .iter()
        .zip(lp_ref.iter())
        .map(|(&a, &b)| a.exp() * (a - b))
        .sum();
    total / lp.nrows() as f64
}

/// Exact `(1/X) sum_x sum_y pi(y|x) r(x,y)` ([C-METRICS]).
pub fn expected_reward(logits: ArrayView2<f64>, rewards: ArrayView2<f64>) -> f64 {
    let p = probabilities(logits);
    (&p * &rewards).sum() / p.nrows() as f64
}
