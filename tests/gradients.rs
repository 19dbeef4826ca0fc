//! Finite-difference checks of every analytic gradient: per pair with
//! respect to the sequence log-probabilities and the value, and per bandit
//! with respect to the logits, in both estimators.

mod common;

use common::*;
use ndarray::Array2;
use p3o::reference::policy::log_softmax;
use p3o::reference::{
    Algorithm, Batch, Hyper, PairConsts, PairVars, Problem, pair_surrogate, surrogate,
};
use p3o::tolerance::{FD_STEP, FINITE_DIFFERENCE, close};
use proptest::prelude::*;

fn pairs_near_kink(alg: Algorithm, h: &Hyper, p: &Problem, batch: &Batch) -> bool {
    let lp = log_softmax(p.logits.view());
    let lp_old = log_softmax(p.logits_old.view());
    let (x_count, k) = p.logits.dim();
    let check = |x: usize, y1: usize, y2: usize| {
        near_kink(
            alg,
            h,
            [lp[[x, y1]], lp[[x, y2]]],
            [lp_old[[x, y1]], lp_old[[x, y2]]],
        )
    };
    let in_group = |x: usize, ys: &[usize]| {
        (0..ys.len()).any(|i| (i + 1..ys.len()).any(|j| check(x, ys[i], ys[j])))
    };
    match batch {
        Batch::Sampled(pairs) => pairs.iter().any(|q| check(q.x, q.y1, q.y2)),
        Batch::Groups(groups) => groups.iter().any(|g| in_group(g.x, &g.ys)),
        // Every pair of actions appears in some group of any size >= 2.
        Batch::Exact | Batch::ExactGroups(_) => {
            (0..x_count).any(|x| (0..k).any(|y1| (0..k).any(|y2| check(x, y1, y2))))
        }
    }
}

/// Central difference of `f` at `v` in direction `i` of a flat view.
fn central(f: impl Fn(f64) -> f64, v: f64) -> f64 {
    (f(v + FD_STEP) - f(v - FD_STEP)) / (2.0 * FD_STEP)
}

fn check_logit_gradient(alg: Algorithm, s: &Scenario, batch: &Batch) -> Result<(), TestCaseError> {
    let p = s.problem_for(alg);
    prop_assume!(!pairs_near_kink(alg, &s.hyper, &p, batch));
    let ev = surrogate(alg, &s.hyper, &p, batch, p.logits.view(), p.value.as_ref());
    let scale = 1.0 + max_abs(ev.grad.iter());
    for ((x, y), &g) in ev.grad.indexed_iter() {
        let f = |t: f64| {
            let mut theta: Array2<f64> = p.logits.clone();
            theta[[x, y]] = t;
            surrogate(alg, &s.hyper, &p, batch, theta.view(), p.value.as_ref()).loss
        };
        let fd = central(f, p.logits[[x, y]]);
        prop_assert!(
            (fd - g).abs() <= FINITE_DIFFERENCE * scale,
            "{alg} d/dlogits[{x}][{y}]: analytic {g}, fd {fd}"
        );
    }
    if let (Some(v), Some(gv)) = (p.value.as_ref(), ev.grad_value.as_ref()) {
        for x in 0..v.len() {
            let f = |t: f64| {
                let mut value = v.clone();
                value[x] = t;
                surrogate(alg, &s.hyper, &p, batch, p.logits.view(), Some(&value)).loss
            };
            let fd = central(f, v[x]);
            prop_assert!(
                close(fd, gv[x], FINITE_DIFFERENCE),
                "{alg} d/dV[{x}]: analytic {}, fd {fd}",
                gv[x]
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config("tests/proptest-regressions/gradients.txt"))]

    // spec: C-SURROGATE C-SOFTMAX C-VPG C-PPG C-P3O-V1 C-P3O-V2 C-DPO C-PPO
    #[test]
    fn pair_gradients_match_finite_differences((c, v) in pair_point(), h in hyper(), alg in algorithm()) {
        prop_assume!(!near_kink(alg, &h, v.lp, c.lp_old));
        let out = pair_surrogate(alg, &h, &c, v, v);
        let eval = |cur: PairVars| pair_surrogate(alg, &h, &c, cur, v).loss;
        for i in 0..2 {
            let fd = central(|t| { let mut cur = v; cur.lp[i] = t; eval(cur) }, v.lp[i]);
            prop_assert!(close(fd, out.grad.lp[i], FINITE_DIFFERENCE), "{alg} d/dlp{}: analytic {}, fd {fd}", i + 1, out.grad.lp[i]);
        }
        let fd = central(|t| eval(PairVars { value: t, ..v }), v.value);
        prop_assert!(close(fd, out.grad.value, FINITE_DIFFERENCE), "{alg} d/dV: analytic {}, fd {fd}", out.grad.value);
    }

    // spec: C-SURROGATE C-SOFTMAX C-EXPECTATION
    #[test]
    fn sampled_logit_gradients_match_finite_differences(s in scenario(), alg in algorithm()) {
        check_logit_gradient(alg, &s, &s.sampled())?;
    }

    // spec: C-SURROGATE C-SOFTMAX C-EXPECTATION
    #[test]
    fn exact_logit_gradients_match_finite_differences(s in scenario(), alg in algorithm()) {
        check_logit_gradient(alg, &s, &Batch::Exact)?;
    }

    /// The surrogate's value at `theta = theta_bar` is the reported loss.
    // spec: C-SURROGATE
    #[test]
    fn surrogate_at_frozen_point_is_the_loss(s in scenario(), alg in algorithm()) {
        let p = s.problem_for(alg);
        let a = p3o::reference::evaluate(alg, &s.hyper, &p, &s.sampled());
        let b = surrogate(alg, &s.hyper, &p, &s.sampled(), p.logits.view(), p.value.as_ref());
        prop_assert_eq!(a, b);
    }

    /// [C-SHAPED-REWARD]: with beta, every algorithm but DPO behaves as with
    /// beta = 0 on the table `r - beta (log pi_old - log pi_ref)`.
    // spec: C-SHAPED-REWARD
    #[test]
    fn shaped_reward_is_a_constant_table(s in scenario(), alg in algorithm()) {
        // DPO, GRPO and p3o-trlx read the raw rewards ([C-DPO], [C-GRPO], [C-P3O-TRLX]).
        prop_assume!(!matches!(alg, Algorithm::Dpo | Algorithm::Grpo | Algorithm::P3oTrlx));
        let p = s.problem_for(alg);
        let shaped = &p.rewards
            - &((&log_softmax(p.logits_old.view()) - &log_softmax(p.logits_ref.view())) * s.hyper.beta);
        let flat = Problem { rewards: shaped, ..p.clone() };
        let h0 = Hyper { beta: 0.0, ..s.hyper };
        for batch in [s.sampled(), Batch::Exact] {
            let a = p3o::reference::evaluate(alg, &s.hyper, &p, &batch);
            let b = p3o::reference::evaluate(alg, &h0, &flat, &batch);
            let scale = 1.0 + max_abs(a.grad.iter());
            assert_all_close("grad", &a.grad, &b.grad, 1e-12, scale)?;
            prop_assert!(close(a.loss, b.loss, 1e-12));
        }
    }
}

/// A pair whose clipped term is exactly on a kink still gets the closed-band
/// gradient of [C-CLIP] and a finite loss.
// spec: C-CLIP
#[test]
fn gradient_on_the_band_edge_passes() {
    let h = Hyper {
        beta: 0.0,
        epsilon: 0.25,
        vf_coef: 1.0,
        ..Hyper::default()
    };
    let c = PairConsts {
        reward: [1.0, 0.0],
        lp_old: [-1.0, -1.0],
        lp_ref: [-1.0, -1.0],
    };
    let lp0 = -1.0 + 1.25f64.ln();
    let v = PairVars {
        lp: [lp0, -1.0],
        value: 0.0,
    };
    let out = pair_surrogate(Algorithm::P3oV1, &h, &c, v, v);
    let rho = (lp0 + 1.0f64).exp();
    assert!(
        out.grad.lp[0] != 0.0 && close(out.grad.lp[0], -rho / 2.0, 1e-15),
        "{out:?}"
    );
}
