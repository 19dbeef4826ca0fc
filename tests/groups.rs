//! Groups of responses and the group baselines on the float64 reference:
//! the losses by hand and against finite differences, Theorem 2 for groups,
//! a per-prompt scale (which GRPO ignores and P3O, RLOO and DPO do not),
//! exact group expectations (P3O over groups = over pairs, RLOO = VPG,
//! GRPO != VPG), Monte-Carlo convergence of the sampled group estimators,
//! p3o-trlx's PPG limit, and the variance of all pairs against disjoint
//! pairs.

mod common;

use common::*;
use ndarray::{Array2, Axis};
use p3o::reference::group::{GroupVars, group_surrogate};
use p3o::reference::group_losses::{
    GroupConsts, GrpoSettings, grpo, grpo_advantages, rloo, rloo_advantages,
};
use p3o::reference::policy::{log_softmax, probabilities};
use p3o::reference::shift::shift_rewards;
use p3o::reference::{
    Algorithm, Batch, Evaluation, Group, Hyper, Pair, PairConsts, PairVars, Problem, ScaleRewards,
    evaluate, pair_surrogate, sample_groups, surrogate,
};
use p3o::tolerance::{
    F64_IDENTITY, F64_SHIFTED, FD_STEP, FINITE_DIFFERENCE, MC_STANDARD_ERRORS, close,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The pairwise algorithms of [C-GROUP].
const PAIRWISE: [Algorithm; 7] = [
    Algorithm::Vpg,
    Algorithm::Ppg,
    Algorithm::P3oV1,
    Algorithm::P3oV2,
    Algorithm::Dpo,
    Algorithm::Ppo,
    Algorithm::P3oTrlx,
];

/// `n` in 1..=5 groups of 2..=5 responses within `[x, k]`.
fn groups(x: usize, k: usize) -> impl Strategy<Value = Vec<Group>> {
    prop::collection::vec(
        (0..x, prop::collection::vec(0..k, 2..=5)).prop_map(|(x, ys)| Group { x, ys }),
        1..=5,
    )
}

/// A bandit problem as in `common::scenario` with sampled groups.
#[derive(Clone, Debug)]
struct GroupScenario {
    base: Scenario,
    groups: Vec<Group>,
}

fn group_scenario() -> impl Strategy<Value = GroupScenario> {
    scenario().prop_flat_map(|base| {
        let (x, k) = base.problem.logits.dim();
        groups(x, k).prop_map(move |groups| GroupScenario {
            base: base.clone(),
            groups,
        })
    })
}

/// Small bandits for exact enumeration over groups: X <= 2, K <= 4.
fn small_scenario() -> impl Strategy<Value = Scenario> {
    scenario().prop_filter("small enough to enumerate K^4", |s| {
        let (x, k) = s.problem.logits.dim();
        x <= 2 && k <= 4
    })
}

/// The hyper-parameters `alg` is run with in these tests: GRPO in both scale
/// modes is covered by running it twice (see [`variants`]).
fn variants(h: &Hyper) -> Vec<(Algorithm, Hyper)> {
    let mut out: Vec<(Algorithm, Hyper)> = Algorithm::ALL
        .into_iter()
        .filter(|&a| a != Algorithm::Ppo)
        .map(|a| (a, *h))
        .collect();
    out.push((
        Algorithm::Grpo,
        Hyper {
            scale_rewards: ScaleRewards::None,
            ..*h
        },
    ));
    out.push((
        Algorithm::Grpo,
        Hyper {
            std_eps: 0.25,
            ..*h
        },
    ));
    out
}

fn with_rewards(p: &Problem, rewards: Array2<f64>) -> Problem {
    Problem {
        rewards,
        ..p.clone()
    }
}

fn assert_same(a: &Evaluation, b: &Evaluation, rel: f64, what: &str) -> Result<(), TestCaseError> {
    let scale = 1.0 + max_abs(a.grad.iter());
    assert_all_close(what, &a.grad, &b.grad, rel, scale)?;
    Ok(())
}

#[test]
// spec: C-RLOO
fn rloo_by_hand() {
    // Shaped rewards 1, 2, 6 (beta = 0): A = 1 - 4, 2 - 3.5, 6 - 1.5.
    assert_eq!(rloo_advantages(&[1.0, 2.0, 6.0]), vec![-3.0, -1.5, 4.5]);
    let c = GroupConsts {
        reward: vec![1.0, 2.0, 6.0],
        lp_old: vec![-1.0, -1.0, -1.0],
        lp_ref: vec![-2.0, -1.0, 0.0],
    };
    // rho = e^0.3 (above the band 1 +- 0.2), 1, e^-0.3 (below it).
    let lp = [-0.7, -1.0, -1.3];
    let out = rloo(&c, 0.0, 0.2, &lp);
    let rho = [0.3f64.exp(), 1.0, (-0.3f64).exp()];
    // A1 < 0 with rho1 > hi passes; A3 > 0 with rho3 < lo passes, and
    // min(A rho, A clip) picks rho3 and 1.2 for A1.
    let want_loss = -(-3.0 * 1.2f64.max(rho[0]) + -1.5 * 1.0 + 4.5 * rho[2]) / 3.0;
    assert!(
        close(out.loss, want_loss, 1e-15),
        "{} vs {want_loss}",
        out.loss
    );
    let want = [3.0 * rho[0] / 3.0, 1.5 / 3.0, -4.5 * rho[2] / 3.0];
    for i in 0..3 {
        assert!(
            close(out.grad_lp[i], want[i], 1e-15),
            "{i}: {:?}",
            out.grad_lp
        );
    }
    // With beta, the shaped rewards r - beta (lp_old - lp_ref) = 1 - 0.5,
    // 2, 6 + 0.5 enter the advantages: A2 = 2 - 7/2, and rho2 = 1.
    assert_eq!(
        rloo(&c, 0.5, f64::INFINITY, &[-1.0; 3]).grad_lp[1],
        (3.5 - 2.0) / 3.0
    );
}

#[test]
// spec: C-GRPO
fn grpo_by_hand() {
    // Rewards 1, 2, 6: centred -2, -1, 3; sample variance (4 + 1 + 9)/2 = 7.
    let s = 7f64.sqrt();
    let a = grpo_advantages(&[1.0, 2.0, 6.0], ScaleRewards::Group, 0.0);
    for (got, want) in a.iter().zip([-2.0 / s, -1.0 / s, 3.0 / s]) {
        assert!(close(*got, want, 1e-15));
    }
    let a = grpo_advantages(&[1.0, 2.0, 6.0], ScaleRewards::Group, 1.0);
    assert!(close(a[2], 3.0 / (s + 1.0), 1e-15));
    assert_eq!(
        grpo_advantages(&[1.0, 2.0, 6.0], ScaleRewards::None, 0.0),
        vec![-2.0, -1.0, 3.0]
    );
    // Equal rewards give zero advantages exactly, also where their float
    // mean is not one of them (0.1 + 0.1 + 0.1 != 0.3).
    assert_eq!(
        grpo_advantages(&[0.1; 3], ScaleRewards::Group, 0.0),
        vec![0.0; 3]
    );
    assert_eq!(
        grpo_advantages(&[0.1; 3], ScaleRewards::None, 0.0),
        vec![0.0; 3]
    );
    // k3: at lp = lp_ref it is 0 with gradient 0; at lp_ref - lp = u it is
    // e^u - u - 1 with gradient -(e^u - 1), per response over G.
    let c = GroupConsts {
        reward: vec![3.0, 3.0],
        lp_old: vec![-1.0, -2.0],
        lp_ref: vec![-1.0, -1.5],
    };
    let settings = GrpoSettings {
        beta: 0.4,
        scale: ScaleRewards::Group,
        std_eps: 0.0,
    };
    let out = grpo(&c, &settings, 0.2, &[-1.0, -2.0]);
    let u = 0.5f64;
    assert!(close(out.loss, 0.4 * (u.exp() - u - 1.0) / 2.0, 1e-15));
    assert_eq!(out.grad_lp[0], 0.0);
    assert!(close(out.grad_lp[1], -0.4 * (u.exp() - 1.0) / 2.0, 1e-15));
}

#[test]
// spec: C-P3O-TRLX
fn p3o_trlx_by_hand() {
    let c = PairConsts {
        reward: [2.0, -1.0],
        lp_old: [-1.0, -2.0],
        lp_ref: [-1.5, -1.5],
    };
    let v = PairVars {
        lp: [-0.9, -2.2],
        value: 0.0,
    };
    let h = Hyper {
        beta: 0.5,
        epsilon: 0.2,
        cliprange_ratio: 1.1,
        ..Hyper::default()
    };
    // lr = 0.6, -0.7; olr = 0.5, -0.5; q = 3 - 0.5 * 1.3 = 2.35;
    // rho1 rho2 = e^(0.1 - 0.2) = e^-0.1, below 1/1.1, so w = 1/1.1;
    // D = 1.3, D_old = 1.0, band [0.8, 1.2]: A > 0 and D > 1.2, clipped.
    let out = pair_surrogate(Algorithm::P3oTrlx, &h, &c, v, v);
    let a = 2.35 / 1.1;
    assert!(close(out.loss, -a * 1.2 / 2.0, 1e-14), "{}", out.loss);
    assert_eq!(out.grad.lp, [0.0, 0.0]);
    // Inside the band (lr = 0.55, -0.55, D = 1.1; rho1 rho2 = 1 = w) the
    // gradient is -A/2, +A/2 with A = q = 3 - 0.5 * 1.1.
    let v = PairVars {
        lp: [-0.95, -2.05],
        value: 0.0,
    };
    let out = pair_surrogate(Algorithm::P3oTrlx, &h, &c, v, v);
    let q = 3.0 - 0.5 * 1.1;
    let w = 1.0;
    assert!(close(out.grad.lp[0], -q * w / 2.0, 1e-14));
    assert!(close(out.grad.lp[1], q * w / 2.0, 1e-14));
}

fn groups_near_kink(alg: Algorithm, h: &Hyper, p: &Problem, batch: &Batch) -> bool {
    let lp = log_softmax(p.logits.view());
    let lp_old = log_softmax(p.logits_old.view());
    let (x_count, k) = p.logits.dim();
    let check = |x: usize, a: usize, b: usize| {
        near_kink(
            alg,
            h,
            [lp[[x, a]], lp[[x, b]]],
            [lp_old[[x, a]], lp_old[[x, b]]],
        )
    };
    match batch {
        Batch::Groups(groups) => groups.iter().any(|g| {
            (0..g.ys.len()).any(|i| (i + 1..g.ys.len()).any(|j| check(g.x, g.ys[i], g.ys[j])))
        }),
        _ => (0..x_count).any(|x| (0..k).any(|a| (0..k).any(|b| check(x, a, b)))),
    }
}

proptest! {
    #![proptest_config(config("tests/proptest-regressions/groups.txt"))]

    /// Finite differences of the group losses with respect to the logits,
    /// for every algorithm over sampled groups of 2-5 and the exact
    /// expectation over groups of 3.
    // spec: C-GROUP C-RLOO C-GRPO C-P3O-TRLX C-SURROGATE
    #[test]
    fn group_logit_gradients_match_finite_differences(s in group_scenario(), alg in algorithm()) {
        let p = s.base.problem_for(alg);
        let h = s.base.hyper;
        for batch in [Batch::Groups(s.groups.clone()), Batch::ExactGroups(3)] {
            if matches!(batch, Batch::ExactGroups(_)) && p.contexts() * p.actions().pow(3) > 300 {
                continue;
            }
            prop_assume!(!groups_near_kink(alg, &h, &p, &batch));
            let ev = surrogate(alg, &h, &p, &batch, p.logits.view(), p.value.as_ref());
            let scale = 1.0 + max_abs(ev.grad.iter());
            for ((x, y), &g) in ev.grad.indexed_iter() {
                let f = |t: f64| {
                    let mut theta = p.logits.clone();
                    theta[[x, y]] = t;
                    surrogate(alg, &h, &p, &batch, theta.view(), p.value.as_ref()).loss
                };
                let t = p.logits[[x, y]];
                let fd = (f(t + FD_STEP) - f(t - FD_STEP)) / (2.0 * FD_STEP);
                prop_assert!(
                    (fd - g).abs() <= FINITE_DIFFERENCE * scale,
                    "{alg} d/dlogits[{x}][{y}]: analytic {g}, fd {fd}"
                );
            }
        }
    }

    /// Theorem 2 over groups: the same update under `r + delta(x)`,
    /// `|delta| <= 1e3`, sampled and exact (groups of 3), for P3O-V1/V2,
    /// PPG, DPO, RLOO, GRPO (both scale modes, with and without `std_eps`)
    /// and p3o-trlx.
    // spec: C-GROUP-SHIFT C-INVARIANCE C-THM2
    #[test]
    fn group_algorithms_are_shift_invariant(s in group_scenario()) {
        let base = &s.base;
        let p = base.problem_for(Algorithm::Vpg);
        let shifted = with_rewards(&p, shift_rewards(&p.rewards, &base.delta));
        let reward_scale = 1.0 + max_abs(shifted.rewards.iter());
        // GRPO divides by the spread of a group's rewards: its rounding is
        // relative to that spread.
        let spread = min_gap(&p.rewards);
        for (alg, h) in variants(&base.hyper) {
            if alg == Algorithm::Vpg {
                continue;
            }
            let rel = if alg == Algorithm::Grpo { F64_SHIFTED / spread.min(1.0) } else { F64_SHIFTED };
            for batch in [Batch::Groups(s.groups.clone()), Batch::ExactGroups(3)] {
                let a = evaluate(alg, &h, &p, &batch);
                let b = evaluate(alg, &h, &shifted, &batch);
                assert_same(&a, &b, rel * reward_scale, &format!("{alg} {:?}", h.scale_rewards))?;
            }
        }
    }

    /// [C-GROUP-SCALE]: under `c(x) r + delta(x)` with `c(x)` in
    /// [1e-2, 1e2], GRPO (`"group"`, `std_eps = 0`) gives the same update;
    /// with `beta = 0` the P3O-V1, P3O-V2, PPG and RLOO gradients of each
    /// context are multiplied by `c(x)`, clipped or not.
    // spec: C-GROUP-SCALE
    #[test]
    fn a_per_prompt_scale_leaves_grpo_and_scales_p3o_and_rloo(
        s in group_scenario(),
        log_c in prop::collection::vec(-2.0..=2.0f64, 4),
    ) {
        let base = &s.base;
        let p = base.problem_for(Algorithm::Vpg);
        let c: Vec<f64> = (0..p.contexts()).map(|x| 10f64.powf(log_c[x])).collect();
        let mut scaled = p.rewards.clone();
        for (x, mut row) in scaled.axis_iter_mut(Axis(0)).enumerate() {
            row.mapv_inplace(|r| c[x] * r + base.delta[x]);
        }
        let q = with_rewards(&p, scaled);
        let spread = min_gap(&p.rewards) * c.iter().cloned().fold(f64::INFINITY, f64::min);
        // Rounding of `c r + delta` relative to the smallest scaled reward gap
        // (about 500 ulps of the largest shifted reward).
        let rel = 1e-13 * (1.0 + max_abs(q.rewards.iter())) / spread.min(1.0);
        prop_assume!(rel < 1e-6);
        let batches = [Batch::Groups(s.groups.clone()), Batch::ExactGroups(3)];
        let h = Hyper { scale_rewards: ScaleRewards::Group, std_eps: 0.0, ..base.hyper };
        for batch in &batches {
            let a = evaluate(Algorithm::Grpo, &h, &p, batch);
            let b = evaluate(Algorithm::Grpo, &h, &q, batch);
            assert_same(&a, &b, rel, "grpo")?;
        }
        for eps in [base.hyper.epsilon, f64::INFINITY] {
            let h = Hyper { beta: 0.0, epsilon: eps, ..base.hyper };
            for alg in [Algorithm::P3oV1, Algorithm::P3oV2, Algorithm::Ppg, Algorithm::Rloo] {
                for batch in &batches {
                    let a = evaluate(alg, &h, &p, batch);
                    let b = evaluate(alg, &h, &q, batch);
                    let mut want = a.grad.clone();
                    for (x, mut row) in want.axis_iter_mut(Axis(0)).enumerate() {
                        row.mapv_inplace(|g| c[x] * g);
                    }
                    let scale = 1.0 + max_abs(b.grad.iter());
                    assert_all_close(&format!("{alg} eps {eps}"), &b.grad, &want, rel, scale)?;
                }
            }
        }
    }

    /// [C-GROUP-EXACT]: for every pairwise algorithm the exact loss and
    /// gradient over groups of 3 and 4 equal the exact pair ones.
    // spec: C-GROUP-EXACT C-GROUP
    #[test]
    fn exact_groups_have_the_pair_expectation(s in small_scenario()) {
        for alg in PAIRWISE {
            let p = s.problem_for(alg);
            let pairs = evaluate(alg, &s.hyper, &p, &Batch::Exact);
            for g in [3, 4] {
                let groups = evaluate(alg, &s.hyper, &p, &Batch::ExactGroups(g));
                assert_same(&pairs, &groups, F64_IDENTITY, &format!("{alg} G = {g}"))?;
                prop_assert!(close(pairs.loss, groups.loss, F64_IDENTITY), "{alg} G = {g}: loss {} vs {}", pairs.loss, groups.loss);
                if let (Some(a), Some(b)) = (&pairs.grad_value, &groups.grad_value) {
                    for (u, v) in a.iter().zip(b) {
                        prop_assert!(close(*u, *v, F64_IDENTITY));
                    }
                }
            }
        }
    }

    /// [C-RLOO-VPG]: exact RLOO with `eps = inf` has the exact VPG gradient
    /// at any theta (groups of 2, 3 and 4), and its loss is VPG's plus the
    /// behaviour policy's expected shaped reward.
    // spec: C-RLOO-VPG C-RLOO C-VPG
    #[test]
    fn exact_rloo_is_exact_vpg(s in small_scenario()) {
        let h = Hyper { epsilon: f64::INFINITY, ..s.hyper };
        let p = s.problem_for(Algorithm::Rloo);
        let vpg = evaluate(Algorithm::Vpg, &h, &p, &Batch::Exact);
        let lp_old = log_softmax(p.logits_old.view());
        let lp_ref = log_softmax(p.logits_ref.view());
        let shaped = &p.rewards - &((&lp_old - &lp_ref) * h.beta);
        let baseline = (&lp_old.mapv(f64::exp) * &shaped).sum() / p.contexts() as f64;
        for g in [2, 3, 4] {
            let rloo = evaluate(Algorithm::Rloo, &h, &p, &Batch::ExactGroups(g));
            assert_same(&vpg, &rloo, F64_IDENTITY, &format!("G = {g}"))?;
            let want = vpg.loss + baseline;
            prop_assert!(close(rloo.loss, want, F64_IDENTITY * (1.0 + baseline.abs())), "G = {g}: {} vs {want}", rloo.loss);
        }
    }

    /// [C-TRLX-PPG]: with `c = inf`, `eps = inf` and `beta = 0`, p3o-trlx's
    /// pair gradient is PPG's and its value is PPG's plus
    /// `(1/2) A (lp_ref1 - lp_ref2)`; so are its bandit gradients.
    // spec: C-TRLX-PPG C-P3O-TRLX C-PPG
    #[test]
    fn p3o_trlx_without_clips_or_kl_is_ppg((c, v) in pair_point(), step in prop::array::uniform2(-1.0..=1.0f64), s in scenario()) {
        let h = Hyper { beta: 0.0, epsilon: f64::INFINITY, cliprange_ratio: f64::INFINITY, ..Hyper::default() };
        // The stop-gradient point, apart from the current one.
        let frozen = PairVars { lp: [c.lp_old[0] + step[0], c.lp_old[1] + step[1]], value: 0.0 };
        let trlx = pair_surrogate(Algorithm::P3oTrlx, &h, &c, v, frozen);
        let ppg = pair_surrogate(Algorithm::Ppg, &h, &c, v, frozen);
        for i in 0..2 {
            prop_assert!(close(trlx.grad.lp[i], ppg.grad.lp[i], F64_IDENTITY), "{i}: {} vs {}", trlx.grad.lp[i], ppg.grad.lp[i]);
        }
        let rho = [0, 1].map(|i| (frozen.lp[i] - c.lp_old[i]).exp());
        let a = (c.reward[0] - c.reward[1]) * rho[0] * rho[1];
        let want = ppg.loss + a * (c.lp_ref[0] - c.lp_ref[1]) / 2.0;
        prop_assert!(close(trlx.loss, want, F64_IDENTITY * (1.0 + a.abs() * 12.0)), "{} vs {want}", trlx.loss);
        for batch in [s.sampled(), Batch::Exact] {
            let p = s.problem_for(Algorithm::Ppg);
            let a = evaluate(Algorithm::P3oTrlx, &h, &p, &batch);
            let b = evaluate(Algorithm::Ppg, &h, &p, &batch);
            assert_same(&a, &b, F64_IDENTITY, "bandit")?;
        }
    }

}

proptest! {
    // Each case enumerates every group of 4 (up to 512 of them): fewer cases.
    #![proptest_config(ProptestConfig { cases: 48, ..config("tests/proptest-regressions/groups.txt") })]

    /// [C-GROUP-VARIANCE]: for the same group of 4 responses, the mean
    /// over all pairs has the same expectation as the mean over the disjoint
    /// pairs (1, 2), (3, 4), ... and no larger variance in any coordinate of
    /// the gradient, by exact enumeration of every group.
    // spec: C-GROUP-VARIANCE C-GROUP-EXACT
    #[test]
    fn all_pairs_have_no_more_variance_than_disjoint_pairs(s in small_scenario(), alg in prop::sample::select(PAIRWISE.to_vec())) {
        let p = s.problem_for(alg);
        let (x_count, k) = p.logits.dim();
        let g = 4;
        let probs_old = probabilities(p.logits_old.view());
        let (mut mean_all, mut mean_dis) = (Array2::<f64>::zeros((x_count, k)), Array2::<f64>::zeros((x_count, k)));
        let (mut sq_all, mut sq_dis) = (mean_all.clone(), mean_dis.clone());
        for x in 0..x_count {
            for n in 0..k.pow(g as u32) {
                let ys: Vec<usize> = (0..g).map(|i| (n / k.pow(i as u32)) % k).collect();
                let w = ys.iter().map(|&y| probs_old[[x, y]]).product::<f64>() / x_count as f64;
                let all = evaluate(alg, &s.hyper, &p, &Batch::Groups(vec![Group { x, ys: ys.clone() }])).grad;
                let disjoint: Vec<Pair> = ys.chunks(2).map(|c| Pair { x, y1: c[0], y2: c[1] }).collect();
                let dis = evaluate(alg, &s.hyper, &p, &Batch::Sampled(disjoint)).grad;
                mean_all.scaled_add(w, &all);
                mean_dis.scaled_add(w, &dis);
                sq_all.scaled_add(w, &(&all * &all));
                sq_dis.scaled_add(w, &(&dis * &dis));
            }
        }
        let exact = evaluate(alg, &s.hyper, &p, &Batch::Exact).grad;
        let scale = 1.0 + max_abs(exact.iter());
        assert_all_close("all pairs", &mean_all, &exact, F64_IDENTITY, scale)?;
        assert_all_close("disjoint pairs", &mean_dis, &exact, F64_IDENTITY, scale)?;
        let var_all = &sq_all - &(&mean_all * &mean_all);
        let var_dis = &sq_dis - &(&mean_dis * &mean_dis);
        let tol = F64_IDENTITY * (1.0 + max_abs(sq_dis.iter()));
        for ((idx, &a), &b) in var_all.indexed_iter().zip(var_dis.iter()) {
            prop_assert!(a <= b + tol, "{alg} coordinate {idx:?}: all pairs {a} > disjoint {b}");
        }
    }
}

/// The smallest nonzero gap between two rewards of one context (1 if none).
fn min_gap(rewards: &Array2<f64>) -> f64 {
    let mut gap = f64::INFINITY;
    for row in rewards.rows() {
        for (i, &a) in row.iter().enumerate() {
            for &b in row.iter().skip(i + 1) {
                if a != b {
                    gap = gap.min((a - b).abs());
                }
            }
        }
    }
    if gap.is_finite() { gap } else { 1.0 }
}

/// [C-GROUP-VARIANCE] has teeth: on a fixed bandit the variance of all
/// pairs is strictly below that of disjoint pairs for P3O-V2 with G = 4.
// spec: C-GROUP-VARIANCE
#[test]
fn all_pairs_reduce_the_variance_on_a_fixed_bandit() {
    let p = fixed_problem(3, 1, 3);
    let h = Hyper::default();
    let probs_old = probabilities(p.logits_old.view());
    let (k, g) = (3usize, 4usize);
    let mut stats = [[0.0f64; 2]; 2];
    for n in 0..k.pow(g as u32) {
        let ys: Vec<usize> = (0..g).map(|i| (n / k.pow(i as u32)) % k).collect();
        let w: f64 = ys.iter().map(|&y| probs_old[[0, y]]).product();
        let all = evaluate(
            Algorithm::P3oV2,
            &h,
            &p,
            &Batch::Groups(vec![Group {
                x: 0,
                ys: ys.clone(),
            }]),
        )
        .grad[[0, 0]];
        let pairs = vec![
            Pair {
                x: 0,
                y1: ys[0],
                y2: ys[1],
            },
            Pair {
                x: 0,
                y1: ys[2],
                y2: ys[3],
            },
        ];
        let dis = evaluate(Algorithm::P3oV2, &h, &p, &Batch::Sampled(pairs)).grad[[0, 0]];
        for (i, v) in [all, dis].into_iter().enumerate() {
            stats[i][0] += w * v;
            stats[i][1] += w * v * v;
        }
    }
    let var = stats.map(|[m, sq]| sq - m * m);
    assert!(
        var[0] < 0.9 * var[1],
        "variance of all pairs {} vs disjoint {}",
        var[0],
        var[1]
    );
}

/// Per-coordinate mean and standard error of the one-group gradients of
/// `n` groups of `g` (contexts uniform, responses from `pi_old`).
fn sampled_groups(
    alg: Algorithm,
    h: &Hyper,
    p: &Problem,
    n: usize,
    g: usize,
    seed: u64,
) -> (Array2<f64>, Array2<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let probs_old = probabilities(p.logits_old.view());
    let x_count = p.contexts();
    let groups = sample_groups(
        &probs_old,
        n,
        g,
        |_, r: &mut ChaCha8Rng| r.random_range(0..x_count),
        &mut rng,
    );
    let mut sum = Array2::<f64>::zeros(p.logits.dim());
    let mut sum_sq = sum.clone();
    for group in &groups {
        let grad = evaluate(alg, h, p, &Batch::Groups(vec![group.clone()])).grad;
        sum += &grad;
        sum_sq += &(&grad * &grad);
    }
    let nf = n as f64;
    let mean = &sum / nf;
    let var = (&sum_sq / nf - &mean * &mean) * (nf / (nf - 1.0));
    let batch = evaluate(alg, h, p, &Batch::Groups(groups)).grad;
    for (a, b) in batch.iter().zip(mean.iter()) {
        assert!(
            close(*a, *b, F64_IDENTITY),
            "the batch estimate is the mean of the groups'"
        );
    }
    (mean, var.mapv(|v| (v.max(0.0) / nf).sqrt()))
}

fn within(mean: &Array2<f64>, se: &Array2<f64>, target: &Array2<f64>) -> bool {
    mean.iter()
        .zip(se.iter().zip(target.iter()))
        .all(|(&m, (&s, &t))| (m - t).abs() <= MC_STANDARD_ERRORS * s + 1e-12)
}

/// The sampled group estimators converge to their exact targets: P3O-V2 and
/// DPO over groups of 4 to the exact pair gradient, RLOO (eps = inf) over
/// groups of 3 to the exact VPG gradient, GRPO over groups of 3 to its
/// exact group gradient, each within `MC_STANDARD_ERRORS` standard errors
/// in every coordinate; and each estimate is rejected against a wrong
/// target (the exact gradient of a 1.5x reward), so the bound has power.
// spec: C-GROUP-EXACT C-RLOO-VPG C-GROUP C-EXPECTATION
#[test]
fn sampled_groups_converge_to_the_exact_gradients() {
    let p = fixed_problem(7, 3, 4);
    let wrong = with_rewards(&p, &p.rewards * 1.5);
    let h = Hyper {
        beta: 0.3,
        ..Hyper::default()
    };
    let unclipped = Hyper {
        epsilon: f64::INFINITY,
        ..h
    };
    let cases: [(Algorithm, Hyper, usize, Algorithm, Batch); 4] = [
        (Algorithm::P3oV2, h, 4, Algorithm::P3oV2, Batch::Exact),
        (Algorithm::Dpo, h, 4, Algorithm::Dpo, Batch::Exact),
        (Algorithm::Rloo, unclipped, 3, Algorithm::Vpg, Batch::Exact),
        (
            Algorithm::Grpo,
            h,
            3,
            Algorithm::Grpo,
            Batch::ExactGroups(3),
        ),
    ];
    for (alg, h, g, target_alg, target_batch) in cases {
        let (mean, se) = sampled_groups(alg, &h, &p, 20_000, g, 11);
        let exact = evaluate(target_alg, &h, &p, &target_batch).grad;
        assert!(
            within(&mean, &se, &exact),
            "{alg}: mean {mean:?}, exact {exact:?}, se {se:?}"
        );
        let exact_wrong = evaluate(target_alg, &h, &wrong, &target_batch).grad;
        // GRPO's standardised advantages ignore a global scale of the
        // rewards ([C-GROUP-SCALE]), so its wrong target is another shape.
        let exact_wrong = if alg == Algorithm::Grpo {
            let mut r = p.rewards.clone();
            r[[0, 0]] += 2.0;
            evaluate(target_alg, &h, &with_rewards(&p, r), &target_batch).grad
        } else {
            exact_wrong
        };
        assert!(
            !within(&mean, &se, &exact_wrong),
            "{alg}: the bound cannot tell a wrong reward apart"
        );
    }
}

/// [C-GRPO-NOT-VPG]: on a fixed bandit at `theta = theta_old`, `beta = 0`,
/// `eps = inf`, GRPO's exact gradient (groups of 2, 3 and 4) is not parallel
/// to the exact VPG gradient, while RLOO's is equal to it.
// spec: C-GRPO-NOT-VPG C-RLOO-VPG
#[test]
fn grpo_is_not_the_policy_gradient() {
    let mut p = fixed_problem(5, 1, 4);
    p.logits = p.logits_old.clone();
    p.rewards = Array2::from_shape_vec((1, 4), vec![0.0, 0.1, 0.2, 3.0]).unwrap();
    let h = Hyper {
        epsilon: f64::INFINITY,
        ..Hyper::default()
    };
    let vpg = evaluate(Algorithm::Vpg, &h, &p, &Batch::Exact).grad;
    let cosine = |a: &Array2<f64>, b: &Array2<f64>| {
        (a * b).sum() / ((a * a).sum().sqrt() * (b * b).sum().sqrt())
    };
    for g in [2, 3, 4] {
        let grpo = evaluate(Algorithm::Grpo, &h, &p, &Batch::ExactGroups(g)).grad;
        let c = cosine(&grpo, &vpg);
        assert!(c < 0.99, "G = {g}: cosine {c}");
        let rloo = evaluate(Algorithm::Rloo, &h, &p, &Batch::ExactGroups(g)).grad;
        assert!(cosine(&rloo, &vpg) > 1.0 - 1e-12);
    }
}

/// [C-GROUP-SCALE], the other side: DPO's update changes under a
/// per-prompt scale (its label probability `sigma(c (r1 - r2))` moves),
/// and P3O's and RLOO's change by the factor, while GRPO's stays the same
/// bit for bit under a power-of-two scale and a shift on a coarse grid.
// spec: C-GROUP-SCALE C-DPO
#[test]
fn dpo_p3o_and_rloo_see_a_scale_and_grpo_does_not() {
    let mut p = fixed_problem(9, 2, 3);
    // Rewards on a grid of 2^-8, so that `c r + delta` below is exact.
    p.rewards.mapv_inplace(|r| (r * 256.0).round() / 256.0);
    let mut scaled = p.rewards.clone();
    let (c, delta) = ([4.0, 0.25], [16.0, -8.0]);
    for (x, mut row) in scaled.axis_iter_mut(Axis(0)).enumerate() {
        row.mapv_inplace(|r| c[x] * r + delta[x]);
    }
    let q = with_rewards(&p, scaled);
    let batch = Batch::Groups(vec![
        Group {
            x: 0,
            ys: vec![0, 1, 2],
        },
        Group {
            x: 1,
            ys: vec![2, 0, 1, 1],
        },
    ]);
    let h = Hyper {
        beta: 0.5,
        ..Hyper::default()
    };
    let grpo = |p: &Problem| evaluate(Algorithm::Grpo, &h, p, &batch).grad;
    assert_eq!(grpo(&p), grpo(&q), "GRPO under a power-of-two scale");
    for alg in [Algorithm::Dpo, Algorithm::P3oV2, Algorithm::Rloo] {
        let a = evaluate(alg, &h, &p, &batch).grad;
        let b = evaluate(alg, &h, &q, &batch).grad;
        let change = (&a - &b).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(
            change > 1e-3 * (1.0 + max_abs(a.iter())),
            "{alg}: change {change}"
        );
    }
    // DPO's label probabilities are what moved.
    let pair = |r: &Array2<f64>| {
        let c = PairConsts {
            reward: [r[[0, 0]], r[[0, 1]]],
            lp_old: [0.0; 2],
            lp_ref: [0.0; 2],
        };
        pair_surrogate(
            Algorithm::Dpo,
            &h,
            &c,
            PairVars::default(),
            PairVars::default(),
        )
        .grad
        .lp[0]
    };
    assert!((pair(&p.rewards) - pair(&q.rewards)).abs() > 1e-3);
}

/// Groups of two are pairs: `Batch::Groups` of two-response groups gives
/// `Batch::Sampled`'s result bit for bit, and `ExactGroups(2)` `Exact`'s,
/// for every algorithm; the group surrogate of RLOO and GRPO with two
/// members is their pair surrogate.
// spec: C-GROUP
#[test]
fn groups_of_two_are_pairs() {
    let p = fixed_problem(13, 2, 3);
    let pairs = vec![
        Pair { x: 0, y1: 0, y2: 2 },
        Pair { x: 1, y1: 1, y2: 1 },
        Pair { x: 0, y1: 2, y2: 1 },
    ];
    let groups: Vec<Group> = pairs.iter().map(|&q| q.into()).collect();
    let h = Hyper {
        beta: 0.2,
        ..Hyper::default()
    };
    for alg in Algorithm::ALL {
        let mut p = p.clone();
        if alg.uses_value() {
            p.value = Some(ndarray::arr1(&[0.5, -0.5]));
        }
        assert_eq!(
            evaluate(alg, &h, &p, &Batch::Sampled(pairs.clone())),
            evaluate(alg, &h, &p, &Batch::Groups(groups.clone())),
            "{alg}"
        );
        assert_eq!(
            evaluate(alg, &h, &p, &Batch::Exact),
            evaluate(alg, &h, &p, &Batch::ExactGroups(2)),
            "{alg}"
        );
    }
    let c = GroupConsts {
        reward: vec![1.0, -2.0],
        lp_old: vec![-1.0, -0.5],
        lp_ref: vec![-0.7, -0.9],
    };
    let cur = [-0.8, -0.6];
    for alg in [Algorithm::Rloo, Algorithm::Grpo] {
        let g = group_surrogate(
            alg,
            &h,
            &c,
            GroupVars {
                lp: &cur,
                value: 0.0,
            },
            GroupVars {
                lp: &cur,
                value: 0.0,
            },
        );
        let pc = PairConsts {
            reward: [1.0, -2.0],
            lp_old: [-1.0, -0.5],
            lp_ref: [-0.7, -0.9],
        };
        let v = PairVars {
            lp: cur,
            value: 0.0,
        };
        let q = pair_surrogate(alg, &h, &pc, v, v);
        assert_eq!(
            (g.loss, g.grad_lp.clone()),
            (q.loss, q.grad.lp.to_vec()),
            "{alg}"
        );
    }
}

/// p3o-trlx at the token level ([C-P3O-TRLX]) on the reference.
mod trlx_tokens {
    use super::*;
    use p3o::reference::trlx_tokens::{
        TokenGroup, TrlxOptions, p3o_trlx_token_surrogate, p3o_trlx_tokens,
    };

    type Tokens = Vec<Vec<Vec<f64>>>;

    /// Groups of 2-4 ragged token sequences (1-4 tokens), token log-probs
    /// in [-3, 0] and the current ones within 0.5.
    fn token_groups() -> impl Strategy<Value = (Vec<TokenGroup>, Tokens)> {
        (2..=4usize, 1..=3usize).prop_flat_map(|(g, p)| {
            let response = prop::collection::vec((-3.0..=0.0f64, -0.5..=0.5f64), 1..=4);
            let group = (
                prop::collection::vec(-5.0..=5.0f64, g),
                prop::collection::vec(-10.0..=0.0f64, g),
                prop::collection::vec(response, g),
            );
            prop::collection::vec(group, p).prop_map(|groups| {
                let mut lp = Vec::new();
                let groups = groups
                    .into_iter()
                    .map(|(reward, lp_ref, tokens)| {
                        lp.push(
                            tokens
                                .iter()
                                .map(|r| r.iter().map(|t| t.0 + t.1).collect())
                                .collect(),
                        );
                        TokenGroup {
                            reward,
                            lp_ref,
                            lp_old: tokens
                                .iter()
                                .map(|r| r.iter().map(|t| t.0).collect())
                                .collect(),
                        }
                    })
                    .collect();
                (groups, lp)
            })
        })
    }

    fn options() -> impl Strategy<Value = TrlxOptions> {
        (any::<bool>(), any::<bool>()).prop_map(|(clip_tokenwise, avg_tokenwise)| TrlxOptions {
            clip_tokenwise,
            avg_tokenwise,
        })
    }

    fn trlx_hyper() -> impl Strategy<Value = Hyper> {
        (hyper(), prop_oneof![Just(f64::INFINITY), 1.5..=10.0f64]).prop_map(
            |(h, cliprange_ratio)| Hyper {
                cliprange_ratio,
                ..h
            },
        )
    }

    proptest! {
        #![proptest_config(config("tests/proptest-regressions/groups_trlx_tokens.txt"))]

        /// The token gradients are the surrogate's (`q` and `w` held at
        /// the point): central finite differences token by token (a kink inside a step shows as a mismatch, so the
        /// step's two sides must agree on the clip).
        // spec: C-P3O-TRLX C-CLIP
        #[test]
        fn token_gradients_match_finite_differences((groups, lp) in token_groups(), h in trlx_hyper(), o in options()) {
            let out = p3o_trlx_tokens(&h, o, &groups, &lp);
            for k in 0..lp.len() {
                for m in 0..lp[k].len() {
                    for t in 0..lp[k][m].len() {
                        let at = |d: f64| {
                            let mut moved = lp.clone();
                            moved[k][m][t] += d;
                            p3o_trlx_token_surrogate(&h, o, &groups, &moved, &lp)
                        };
                        let (up, down) = (at(FD_STEP), at(-FD_STEP));
                        // The clip and the bound on w are piecewise: only
                        // where both sides see the same pieces.
                        prop_assume!(up.grad == down.grad || (up.grad[k][m][t] == down.grad[k][m][t] && up.grad[k][m][t] == out.grad[k][m][t]));
                        let fd = (up.loss - down.loss) / (2.0 * FD_STEP);
                        prop_assert!(close(fd, out.grad[k][m][t], FINITE_DIFFERENCE), "group {k} response {m} token {t}: {fd} vs {}", out.grad[k][m][t]);
                    }
                }
            }
        }

        /// Without either option the token-level loss is the sequence
        /// pair loss averaged over pairs and groups; with `avg_tokenwise`
        /// alone, that average times responses over response tokens
        /// (`P G / sum of lengths`).
        // spec: C-P3O-TRLX C-GROUP
        #[test]
        fn token_normalisation_is_a_rescaled_sequence_mean((groups, lp) in token_groups(), h in trlx_hyper()) {
            let seq = |v: &[f64]| v.iter().sum::<f64>();
            let mut mean = 0.0;
            for (g, l) in groups.iter().zip(&lp) {
                let c = GroupConsts {
                    reward: g.reward.clone(),
                    lp_old: g.lp_old.iter().map(|r| seq(r)).collect(),
                    lp_ref: g.lp_ref.clone(),
                };
                let cur: Vec<f64> = l.iter().map(|r| seq(r)).collect();
                let at = GroupVars { lp: &cur, value: 0.0 };
                mean += group_surrogate(Algorithm::P3oTrlx, &h, &c, at, at).loss / groups.len() as f64;
            }
            let plain = p3o_trlx_tokens(&h, TrlxOptions::default(), &groups, &lp);
            prop_assert!(close(plain.loss, mean, F64_IDENTITY), "{} vs {mean}", plain.loss);
            let responses: usize = groups.iter().map(|g| g.reward.len()).sum();
            let tokens: usize = lp.iter().flatten().map(Vec::len).sum();
            let avg = p3o_trlx_tokens(&h, TrlxOptions { avg_tokenwise: true, clip_tokenwise: false }, &groups, &lp);
            let want = mean * responses as f64 / tokens as f64;
            prop_assert!(close(avg.loss, want, F64_IDENTITY), "{} vs {want}", avg.loss);
        }

        /// Theorem 2 at the token level: a per-group shift leaves every
        /// token gradient as it was.
        // spec: C-GROUP-SHIFT C-P3O-TRLX
        #[test]
        fn token_level_is_shift_invariant((groups, lp) in token_groups(), h in trlx_hyper(), o in options(), delta in prop::collection::vec(-1e3..=1e3f64, 3)) {
            let shifted: Vec<TokenGroup> = groups
                .iter()
                .zip(&delta)
                .map(|(g, d)| TokenGroup { reward: g.reward.iter().map(|r| r + d).collect(), ..g.clone() })
                .collect();
            let (a, b) = (p3o_trlx_tokens(&h, o, &groups, &lp), p3o_trlx_tokens(&h, o, &shifted, &lp));
            let flat = |x: &Tokens| x.iter().flatten().flatten().copied().collect::<Vec<f64>>();
            for (x, y) in flat(&a.grad).iter().zip(flat(&b.grad)) {
                prop_assert!(close(*x, y, F64_SHIFTED * 1e3), "{x} vs {y}");
            }
        }
    }
}
