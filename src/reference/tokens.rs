//! Token-level log-probabilities of a language model's logits, their
//! backward, and masked per-sequence sums: the float64 twins of the kernels
//! in `kernels/token_logprob.cu` and `kernels/sequence.cu`.

/// `(max, ln sum_v exp(x_v - max))` of a row: `logsumexp = max + log_sum`,
/// kept apart so that `x - logsumexp` is formed as `(x - max) - log_sum`,
/// exact to rounding however large `max` is (at `|max| = 1e30` the sum
/// `max + log_sum` alone has lost `log_sum` entirely). Masked (`-inf`)
/// entries add nothing.
fn split_logsumexp(row: &[f64]) -> (f64, f64) {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (max, row.iter().map(|&v| (v - max).exp()).sum::<f64>().ln())
}

/// `(log softmax(x)[t], logsumexp(x))` of one row ([C-TOKEN-LOGPROB]).
pub fn token_logprob(row: &[f64], target: usize) -> (f64, f64) {
    let (max, log_sum) = split_logsumexp(row);
    ((row[target] - max) - log_sum, max + log_sum)
}

/// `d loss / d x[v] = g ([v = t] - softmax(x)[v])` ([C-TOKEN-LOGPROB]) for
/// the upstream gradient `g = d loss / d logp`. The target's `1 - softmax`
/// is the sum of the other softmax values, so it keeps full relative
/// precision when the target holds nearly all the mass.
pub fn token_logprob_grad(row: &[f64], target: usize, g: f64) -> Vec<f64> {
    let (max, log_sum) = split_logsumexp(row);
    let mut grad: Vec<f64> = row
        .iter()
        .map(|&x| -g * ((x - max) - log_sum).exp())
        .collect();
    grad[target] = -grad
        .iter()
        .enumerate()
        .filter(|&(v, _)| v != target)
        .map(|(_, &d)| d)
        .sum::<f64>();
    grad
}

/// `sum_t mask[t] (a[t] - c[t])`, `c` absent meaning zero ([C-SEQ-LOGPROB]).
pub fn masked_sum(a: &[f64], c: Option<&[f64]>, mask: &[f64]) -> f64 {
    a.iter()
        .enumerate()
        .map(|(t, &v)| mask[t] * (v - c.map_or(0.0, |c| c[t])))
        .sum()
}
