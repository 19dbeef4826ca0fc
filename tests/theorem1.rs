//! Theorem 1: the pairwise policy gradient equals the vanilla policy
//! gradient in expectation at any theta, and its sampled estimate converges.

mod common;

use common::*;
use ndarray::Array2;
use p3o::reference::policy::probabilities;
use p3o::reference::{Algorithm, Batch, Hyper, Pair, Problem, evaluate, sample_pairs};
use p3o::tolerance::{F64_IDENTITY, MC_STANDARD_ERRORS, close};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

proptest! {
    #![proptest_config(config("tests/proptest-regressions/theorem1.txt"))]

    /// Exact PPG = exact VPG for independent theta and theta_old (ratios far
    /// from 1) and any beta.
    // spec: C-THM1 C-PPG C-VPG C-EXPECTATION
    #[test]
    fn exact_ppg_gradient_equals_exact_vpg_gradient(s in scenario_with(3.0)) {
        let p = s.problem_for(Algorithm::Ppg);
        let ppg = evaluate(Algorithm::Ppg, &s.hyper, &p, &Batch::Exact);
        let vpg = evaluate(Algorithm::Vpg, &s.hyper, &p, &Batch::Exact);
        let scale = 1.0 + max_abs(vpg.grad.iter());
        assert_all_close("grad", &ppg.grad, &vpg.grad, F64_IDENTITY, scale)?;
    }

    /// The exact VPG loss is `-(1/X) sum_x sum_y pi(y|x) r~(x,y)`.
    // spec: C-VPG C-EXPECTATION C-SHAPED-REWARD
    #[test]
    fn exact_vpg_loss_is_minus_expected_shaped_reward(s in scenario_with(3.0)) {
        let p = s.problem_for(Algorithm::Vpg);
        let lp_old = p3o::reference::policy::log_softmax(p.logits_old.view());
        let lp_ref = p3o::reference::policy::log_softmax(p.logits_ref.view());
        let shaped = &p.rewards - &((&lp_old - &lp_ref) * s.hyper.beta);
        let pi = probabilities(p.logits.view());
        let want = -(&pi * &shaped).sum() / p.contexts() as f64;
        let got = evaluate(Algorithm::Vpg, &s.hyper, &p, &Batch::Exact).loss;
        prop_assert!(close(got, want, F64_IDENTITY), "{got} vs {want}");
    }
}

/// Per-coordinate mean and standard error of the single-pair PPG gradients
/// of `n` pairs drawn with contexts uniform and responses from `pi_old`.
fn sampled_ppg(p: &Problem, h: &Hyper, n: usize, seed: u64) -> (Array2<f64>, Array2<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let probs_old = probabilities(p.logits_old.view());
    let x_count = p.contexts();
    let pairs: Vec<Pair> = sample_pairs(
        &probs_old,
        n,
        |_, r: &mut ChaCha8Rng| r.random_range(0..x_count),
        &mut rng,
    );
    let mut sum = Array2::<f64>::zeros(p.logits.dim());
    let mut sum_sq = Array2::<f64>::zeros(p.logits.dim());
    for &pair in &pairs {
        let g = evaluate(Algorithm::Ppg, h, p, &Batch::Sampled(vec![pair])).grad;
        sum += &g;
        sum_sq += &(&g * &g);
    }
    let nf = n as f64;
    let mean = &sum / nf;
    let var = (&sum_sq / nf - &mean * &mean) * (nf / (nf - 1.0));
    let se = var.mapv(|v| (v.max(0.0) / nf).sqrt());
    // The batch estimate is the same mean, computed in one evaluation.
    let batch = evaluate(Algorithm::Ppg, h, p, &Batch::Sampled(pairs)).grad;
    for (a, b) in batch.iter().zip(mean.iter()) {
        assert!(close(*a, *b, F64_IDENTITY));
    }
    (mean, se)
}

/// The sampled PPG gradient (x uniform, y1, y2 ~ pi_old, theta != theta_old)
/// lies within `MC_STANDARD_ERRORS` standard errors of the exact VPG gradient
/// in every coordinate, and the same estimate is far from a wrong target.
// spec: C-THM1 C-EXPECTATION
#[test]
fn sampled_ppg_converges_to_vpg() {
    let h = Hyper {
        beta: 0.3,
        ..Hyper::default()
    };
    let p = fixed_problem(7, 3, 4);
    let (mean, se) = sampled_ppg(&p, &h, 40_000, 11);
    let exact = evaluate(Algorithm::Vpg, &h, &p, &Batch::Exact).grad;
    for ((idx, &m), (&s, &e)) in mean.indexed_iter().zip(se.iter().zip(exact.iter())) {
        assert!(
            (m - e).abs() <= MC_STANDARD_ERRORS * s + 1e-12,
            "coordinate {idx:?}: mean {m}, exact {e}, se {s}"
        );
    }
    // Negative control: the exact VPG gradient of a different reward table is
    // rejected by the same bound, so the check has power.
    let wrong = Problem {
        rewards: &p.rewards * 1.5,
        ..p.clone()
    };
    let exact_wrong = evaluate(Algorithm::Vpg, &h, &wrong, &Batch::Exact).grad;
    let rejected = mean
        .iter()
        .zip(se.iter().zip(exact_wrong.iter()))
        .any(|(&m, (&s, &e))| (m - e).abs() > MC_STANDARD_ERRORS * s);
    assert!(
        rejected,
        "the Monte-Carlo bound cannot tell a 1.5x reward apart"
    );
}
