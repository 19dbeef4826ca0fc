//! Clip semantics and the unclipped limit of P3O.

mod common;

use common::*;
use p3o::reference::losses::clipped_objective;
use p3o::reference::{Algorithm, Batch, Hyper, PairConsts, PairVars, evaluate, pair_loss};
use p3o::tolerance::{F64_IDENTITY, close};
use proptest::prelude::*;

fn unclipped(h: &Hyper) -> Hyper {
    Hyper {
        epsilon: f64::INFINITY,
        ..*h
    }
}

/// Whether PPO's rule zeroes the gradient of `min(A q, A clip(q, lo, hi))`.
fn ppo_zeroes(a: f64, q: f64, lo: f64, hi: f64) -> bool {
    (a > 0.0 && q > hi) || (a < 0.0 && q < lo)
}

proptest! {
    #![proptest_config(config("tests/proptest-regressions/clipping.txt"))]

    /// With `eps = inf`, P3O-V1's gradient is PPG's and P3O-V2's gradient and
    /// loss are twice PPG's, in both estimators and at ratios far from 1.
    // spec: C-P3O-LIMIT C-P3O-V1 C-P3O-V2 C-PPG
    #[test]
    fn unclipped_p3o_is_ppg(s in scenario_with(1.5)) {
        let h = unclipped(&s.hyper);
        let p = s.problem_for(Algorithm::Ppg);
        for batch in [s.sampled(), Batch::Exact] {
            let ppg = evaluate(Algorithm::Ppg, &h, &p, &batch);
            let v1 = evaluate(Algorithm::P3oV1, &h, &p, &batch);
            let v2 = evaluate(Algorithm::P3oV2, &h, &p, &batch);
            let scale = 1.0 + max_abs(v2.grad.iter());
            assert_all_close("v1 vs ppg", &v1.grad, &ppg.grad, F64_IDENTITY, scale)?;
            assert_all_close("v2 vs 2 ppg", &v2.grad, &(&ppg.grad * 2.0), F64_IDENTITY, scale)?;
            prop_assert!(close(v2.loss, 2.0 * ppg.loss, F64_IDENTITY), "v2 loss {} vs 2 x {}", v2.loss, ppg.loss);
            prop_assert!(v1.loss.abs() <= F64_IDENTITY * scale, "unclipped V1 value {}", v1.loss);
        }
    }

    /// The clip routine: value `min(A q, A clamp(q))`, gradient zero exactly
    /// on PPO's side of the band.
    // spec: C-CLIP
    #[test]
    fn clip_routine_follows_ppo(a in -3.0..=3.0f64, q in 0.0..=3.0f64, eps in 0.05..=0.5f64) {
        let (lo, hi) = (1.0 - eps, 1.0 + eps);
        let (value, passes) = clipped_objective(a, q, lo, hi);
        prop_assert_eq!(value, (a * q).min(a * q.clamp(lo, hi)));
        prop_assert_eq!(passes, !ppo_zeroes(a, q, lo, hi));
    }

    /// Per pair, each clipped algorithm's gradient is zero exactly where
    /// PPO's rule says and the unclipped gradient elsewhere, recomputed here
    /// from the paper's formulas.
    // spec: C-CLIP C-P3O-V1 C-P3O-V2 C-PPO
    #[test]
    fn clipping_zeroes_gradients_where_ppo_says((c, v) in pair_point(), h in hyper()) {
        let shaped = c.shaped_reward(h.beta);
        let d = shaped[0] - shaped[1];
        let rho = [0, 1].map(|i| (v.lp[i] - c.lp_old[i]).exp());
        let (lo, hi) = (1.0 - h.epsilon, 1.0 + h.epsilon);

        let v1 = pair_loss(Algorithm::P3oV1, &h, &c, v);
        let weight = [d * rho[1], -d * rho[0]];
        for i in 0..2 {
            let want = if ppo_zeroes(weight[i], rho[i], lo, hi) { 0.0 } else { -weight[i] * rho[i] / 2.0 };
            prop_assert_eq!(v1.grad.lp[i], want, "v1 response {}", i + 1);
        }

        let v2 = pair_loss(Algorithm::P3oV2, &h, &c, v);
        let a = d * rho[0] * rho[1];
        let (l, l_old) = (v.lp[0] - v.lp[1], c.lp_old[0] - c.lp_old[1]);
        let g = if ppo_zeroes(a, l, l_old - h.epsilon, l_old + h.epsilon) { 0.0 } else { a };
        prop_assert_eq!(v2.grad.lp, [-g, g]);

        let ppo = pair_loss(Algorithm::Ppo, &h, &c, v);
        for i in 0..2 {
            let adv = shaped[i] - v.value;
            let want = if ppo_zeroes(adv, rho[i], lo, hi) { 0.0 } else { -0.5 * adv * rho[i] };
            prop_assert_eq!(ppo.grad.lp[i], want, "ppo response {}", i + 1);
        }
    }
}

/// Concrete cases on each side of the band, so that both branches of the
/// rule are exercised whatever the random draws.
// spec: C-CLIP C-P3O-V1
#[test]
fn clipping_cases_by_hand() {
    let h = Hyper {
        beta: 0.0,
        epsilon: 0.2,
        vf_coef: 1.0,
        ..Hyper::default()
    };
    let c = PairConsts {
        reward: [1.0, 0.0],
        lp_old: [-1.0, -1.0],
        lp_ref: [-1.0, -1.0],
    };
    let at = |r1: f64, r2: f64| PairVars {
        lp: [-1.0 + r1.ln(), -1.0 + r2.ln()],
        value: 0.0,
    };
    // D = 1 > 0: y1 is pushed up, y2 down.
    let g = pair_loss(Algorithm::P3oV1, &h, &c, at(1.5, 1.0)).grad.lp;
    assert_eq!(
        g[0], 0.0,
        "rho1 = 1.5 above the band with A1 > 0 is clipped"
    );
    let g = pair_loss(Algorithm::P3oV1, &h, &c, at(0.5, 1.0)).grad.lp;
    assert!(
        g[0] < 0.0,
        "rho1 = 0.5 below the band with A1 > 0 still learns"
    );
    let g = pair_loss(Algorithm::P3oV1, &h, &c, at(1.0, 0.5)).grad.lp;
    assert_eq!(
        g[1], 0.0,
        "rho2 = 0.5 below the band with A2 < 0 is clipped"
    );
    let g = pair_loss(Algorithm::P3oV1, &h, &c, at(1.0, 1.5)).grad.lp;
    assert!(
        g[1] > 0.0,
        "rho2 = 1.5 above the band with A2 < 0 still learns"
    );
}

/// The edges of the band are closed (the gradient passes on them), and a
/// zero advantage is never clipped: [`clipped_objective`] reports a pass.
// spec: C-CLIP
#[test]
fn clip_band_edges_and_zero_advantage_pass() {
    let (lo, hi) = (0.8, 1.2);
    assert!(
        clipped_objective(-1.0, lo, lo, hi).1,
        "A < 0 on the lower edge"
    );
    assert!(
        clipped_objective(1.0, hi, lo, hi).1,
        "A > 0 on the upper edge"
    );
    assert!(
        !clipped_objective(-1.0, 0.7, lo, hi).1,
        "A < 0 below the band"
    );
    assert!(
        !clipped_objective(1.0, 1.3, lo, hi).1,
        "A > 0 above the band"
    );
    for q in [0.5, 1.0, 1.5] {
        let (value, passes) = clipped_objective(0.0, q, lo, hi);
        assert!(passes && value == 0.0, "A = 0 at q = {q}");
    }
}
