//! The variance-reduced online DPO loss is the expectation over Bernoulli
//! labels (appendix A.2).

mod common;

use p3o::reference::losses::{dpo_margin, log_sigmoid, sigmoid};
use p3o::reference::{Algorithm, Hyper, PairConsts, PairVars, pair_loss};
use p3o::tolerance::MC_STANDARD_ERRORS;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Mean and standard error of `f(e)` over `n` labels `e = +1` w.p. `s`.
fn label_average(s: f64, n: usize, rng: &mut ChaCha8Rng, f: impl Fn(f64) -> f64) -> (f64, f64) {
    let (mut sum, mut sum_sq) = (0.0, 0.0);
    for _ in 0..n {
        let e = if rng.random::<f64>() < s { 1.0 } else { -1.0 };
        let v = f(e);
        sum += v;
        sum_sq += v * v;
    }
    let nf = n as f64;
    let mean = sum / nf;
    (
        mean,
        ((sum_sq / nf - mean * mean).max(0.0) / (nf - 1.0)).sqrt(),
    )
}

/// For several pairs, the Monte-Carlo average of the labelled loss
/// `-log sigma(e u)` and of its gradient agree with [C-DPO] within the
/// standard-error bound, and a loss with the label probability flipped does
/// not.
// spec: C-DPO-MC C-DPO
#[test]
fn dpo_loss_is_the_bernoulli_label_average() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let h = Hyper {
        beta: 0.7,
        ..Hyper::default()
    };
    let mut rejected = 0;
    for case in 0..8 {
        let c = PairConsts {
            reward: [
                4.0 * rng.random::<f64>() - 2.0,
                4.0 * rng.random::<f64>() - 2.0,
            ],
            lp_old: [-1.0, -2.0],
            lp_ref: [-3.0 * rng.random::<f64>(), -3.0 * rng.random::<f64>()],
        };
        let v = PairVars {
            lp: [-3.0 * rng.random::<f64>(), -3.0 * rng.random::<f64>()],
            value: 0.0,
        };
        let s = sigmoid(c.reward[0] - c.reward[1]);
        let u = dpo_margin(h.beta, &c, v);
        let exact = pair_loss(Algorithm::Dpo, &h, &c, v);

        let (mean, se) = label_average(s, 200_000, &mut rng, |e| -log_sigmoid(e * u));
        assert!(
            (mean - exact.loss).abs() <= MC_STANDARD_ERRORS * se,
            "case {case}: loss {mean} vs {}",
            exact.loss
        );
        // d/dlp1 of -log sigma(e u) is -e beta sigma(-e u).
        let (gmean, gse) = label_average(s, 200_000, &mut rng, |e| -e * h.beta * sigmoid(-e * u));
        assert!(
            (gmean - exact.grad.lp[0]).abs() <= MC_STANDARD_ERRORS * gse,
            "case {case}: grad {gmean} vs {}",
            exact.grad.lp[0]
        );

        let flipped = -((1.0 - s) * log_sigmoid(u) + s * log_sigmoid(-u));
        if (mean - flipped).abs() > MC_STANDARD_ERRORS * se {
            rejected += 1;
        }
    }
    assert!(
        rejected >= 6,
        "the bound rejected the flipped label probability only {rejected} times in 8"
    );
}
