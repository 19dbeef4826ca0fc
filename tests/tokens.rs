//! The float64 token-level references that the CUDA kernels are checked
//! against: log-softmax at a target, its backward, masked sums and GAE.

mod common;

use common::config;
use p3o::reference::gae::gae;
use p3o::reference::tokens::{masked_sum, token_logprob, token_logprob_grad};
use p3o::tolerance::{FD_STEP, FINITE_DIFFERENCE, close};
use proptest::prelude::*;

proptest! {
    #![proptest_config(config("tests/proptest-regressions/tokens.txt"))]

    /// `logp = x_t - lse`, `exp(logp)` summed over targets is 1, and the
    /// backward matches finite differences of `g * logp`.
    // spec: C-TOKEN-LOGPROB
    #[test]
    fn token_logprob_and_backward(row in prop::collection::vec(-5.0..=5.0f64, 1..=12), pick in any::<prop::sample::Index>(), g in -2.0..=2.0f64) {
        let t = pick.index(row.len());
        let (logp, lse) = token_logprob(&row, t);
        prop_assert!(close(logp, row[t] - lse, 1e-15));
        let total: f64 = (0..row.len()).map(|u| token_logprob(&row, u).0.exp()).sum();
        prop_assert!(close(total, 1.0, 1e-12));
        let grad = token_logprob_grad(&row, t, g);
        for v in 0..row.len() {
            let f = |d: f64| { let mut r = row.clone(); r[v] += d; g * token_logprob(&r, t).0 };
            let fd = (f(FD_STEP) - f(-FD_STEP)) / (2.0 * FD_STEP);
            prop_assert!(close(fd, grad[v], FINITE_DIFFERENCE), "v={v}: {fd} vs {}", grad[v]);
        }
    }

    /// Huge logits stay finite.
    // spec: C-TOKEN-LOGPROB
    #[test]
    fn token_logprob_is_stable(row in prop::collection::vec(-1e4..=1e4f64, 1..=12)) {
        let (logp, lse) = token_logprob(&row, 0);
        prop_assert!(logp.is_finite() && lse.is_finite() && logp <= 1e-9);
    }

    /// `k` tied maxima at any magnitude (up to 1e30) beside masked entries:
    /// each has log-prob `-ln k` and gradient `g ([v = t] - 1/k)`; masked
    /// entries get 0.
    // spec: C-TOKEN-LOGPROB
    #[test]
    fn token_logprob_is_exact_at_any_magnitude(m in -1e30..=1e30f64, k in 1usize..=5, masked in 0usize..=4, g in -2.0..=2.0f64) {
        let mut row = vec![m; k];
        row.extend(std::iter::repeat_n(f64::NEG_INFINITY, masked));
        let (logp, _) = token_logprob(&row, 0);
        prop_assert!(close(logp, -(k as f64).ln(), 1e-15), "{logp}");
        let grad = token_logprob_grad(&row, 0, g);
        let p = 1.0 / k as f64;
        prop_assert!(close(grad[0], g * (1.0 - p), 1e-15), "{}", grad[0]);
        for d in &grad[1..k] {
            prop_assert!(close(*d, -g * p, 1e-15), "{d}");
        }
        prop_assert!(grad[k..].iter().all(|&d| d == 0.0));
    }

    /// A masked sum ignores masked tokens and is linear.
    // spec: C-SEQ-LOGPROB
    #[test]
    fn masked_sum_counts_masked_tokens(items in prop::collection::vec((-5.0..=5.0f64, -5.0..=5.0f64, any::<bool>()), 1..=16)) {
        let a: Vec<f64> = items.iter().map(|i| i.0).collect();
        let c: Vec<f64> = items.iter().map(|i| i.1).collect();
        let mask: Vec<f64> = items.iter().map(|i| f64::from(u8::from(i.2))).collect();
        let want: f64 = items.iter().filter(|i| i.2).map(|i| i.0 - i.1).sum();
        prop_assert!(close(masked_sum(&a, Some(&c), &mask), want, 1e-12));
        prop_assert!(close(masked_sum(&a, None, &mask) - masked_sum(&c, None, &mask), want, 1e-12));
    }

    /// The recursion equals the closed form sum of discounted TD errors on
    /// the unpadded prefix, and padding is zero.
    // spec: C-GAE
    #[test]
    fn gae_matches_the_closed_form(
        steps in prop::collection::vec((-3.0..=3.0f64, -3.0..=3.0f64), 1..=12),
        pad in 0usize..=4, gamma in 0.5..=1.0f64, lambda in 0.0..=1.0f64,
    ) {
        let len = steps.len();
        let mut r: Vec<f64> = steps.iter().map(|s| s.0).collect();
        let mut v: Vec<f64> = steps.iter().map(|s| s.1).collect();
        let mut m = vec![1.0; len];
        r.extend(std::iter::repeat_n(0.7, pad));
        v.extend(std::iter::repeat_n(-0.4, pad));
        m.extend(std::iter::repeat_n(0.0, pad));
        let (adv, ret) = gae(&r, &v, &m, gamma, lambda);
        let next_v = |t: usize| if t + 1 < len { v[t + 1] } else { 0.0 };
        for t in 0..len {
            let want: f64 = (0..len - t)
                .map(|l| (gamma * lambda).powi(l as i32) * (r[t + l] + gamma * next_v(t + l) - v[t + l]))
                .sum();
            prop_assert!(close(adv[t], want, 1e-12), "t={t}: {} vs {want}", adv[t]);
            prop_assert!(close(ret[t], adv[t] + v[t], 1e-12));
        }
        prop_assert!(adv[len..].iter().chain(&ret[len..]).all(|&x| x == 0.0));
    }
}
