//! Reward equivalence: P3O, PPG and DPO are invariant under `r -> r + delta(x)`
//! (Theorem 2), Bradley-Terry is (Lemma 1), and PPO is not, exactly as
//! [C-PPO-SHIFT] states.

mod common;

use common::*;
use ndarray::Array2;
use p3o::reference::bradley_terry::bt_loss;
use p3o::reference::policy::probabilities;
use p3o::reference::shift::shift_rewards;
use p3o::reference::{Algorithm, Batch, Evaluation, Hyper, Problem, evaluate};
use p3o::tolerance::{F64_SHIFTED, close};
use proptest::prelude::*;

fn shifted(p: &Problem, delta: &[f64]) -> Problem {
    Problem {
        rewards: shift_rewards(&p.rewards, delta),
        ..p.clone()
    }
}

/// The scale of rounding in a shifted reward table.
fn shift_scale(p: &Problem, delta: &[f64]) -> f64 {
    1.0 + max_abs(shift_rewards(&p.rewards, delta).iter())
}

fn assert_same_update(
    a: &Evaluation,
    b: &Evaluation,
    reward_scale: f64,
) -> Result<(), TestCaseError> {
    let scale = reward_scale * (1.0 + max_abs(a.grad.iter()));
    assert_all_close("grad", &a.grad, &b.grad, F64_SHIFTED, scale)?;
    prop_assert!(
        (a.loss - b.loss).abs() <= F64_SHIFTED * reward_scale * (1.0 + a.loss.abs()),
        "loss {} vs {}",
        a.loss,
        b.loss
    );
    Ok(())
}

proptest! {
    #![proptest_config(config("tests/proptest-regressions/invariance.txt"))]

    /// Theorem 2 for P3O-V1, P3O-V2 and DPO (and PPG), sampled and exact,
    /// with `|delta| <= 1e3`.
    // spec: C-REWARD-EQUIV C-INVARIANCE C-THM2
    #[test]
    fn p3o_dpo_and_ppg_are_shift_invariant(s in scenario()) {
        for alg in [Algorithm::P3oV1, Algorithm::P3oV2, Algorithm::Dpo, Algorithm::Ppg] {
            let p = s.problem_for(alg);
            let q = shifted(&p, &s.delta);
            for batch in [s.sampled(), Batch::Exact] {
                let a = evaluate(alg, &s.hyper, &p, &batch);
                let b = evaluate(alg, &s.hyper, &q, &batch);
                assert_same_update(&a, &b, shift_scale(&p, &s.delta))?;
            }
        }
    }

    /// Lemma 1: the Bradley-Terry loss of any pair is unchanged by a shift.
    // spec: C-BTL C-REWARD-EQUIV
    #[test]
    fn bradley_terry_is_shift_invariant(rw in -50.0..=50.0f64, rl in -50.0..=50.0f64, delta in -1e3..=1e3f64) {
        let a = bt_loss(rw, rl);
        let b = bt_loss(rw + delta, rl + delta);
        prop_assert!(close(a, b, F64_SHIFTED * (1.0 + rw.abs().max(rl.abs()) + delta.abs())), "{a} vs {b}");
    }

    /// [C-PPO-SHIFT], first part: with every ratio inside the band, the
    /// logit gradient moves by exactly `-(delta/(2N)) (c_x - S_x pi)` and the
    /// value gradient by `-vf_coef delta n_x / N`.
    // spec: C-PPO-SHIFT C-PPO
    #[test]
    fn ppo_shift_changes_the_update_exactly_as_stated(s in scenario_with(0.02)) {
        let alg = Algorithm::Ppo;
        let h = Hyper { epsilon: 0.2, ..s.hyper };
        let p = s.problem_for(alg);
        let q = shifted(&p, &s.delta);
        let pairs = s.pairs.clone();
        let a = evaluate(alg, &h, &p, &s.sampled());
        let b = evaluate(alg, &h, &q, &s.sampled());

        let pi = probabilities(p.logits.view());
        let pi_old = probabilities(p.logits_old.view());
        let (x_count, k) = p.logits.dim();
        let n = pairs.len() as f64;
        let mut c = Array2::<f64>::zeros((x_count, k));
        let mut n_x = vec![0.0; x_count];
        for pair in &pairs {
            for y in [pair.y1, pair.y2] {
                c[[pair.x, y]] += pi[[pair.x, y]] / pi_old[[pair.x, y]];
            }
            n_x[pair.x] += 1.0;
        }
        let mut expected = Array2::<f64>::zeros((x_count, k));
        for x in 0..x_count {
            let s_x: f64 = c.row(x).sum();
            for y in 0..k {
                expected[[x, y]] = -(s.delta[x] / (2.0 * n)) * (c[[x, y]] - s_x * pi[[x, y]]);
            }
        }
        let scale = shift_scale(&p, &s.delta) * (1.0 + max_abs(b.grad.iter()));
        assert_all_close("grad change", &(&b.grad - &a.grad), &expected, F64_SHIFTED, scale)?;
        let (gv_a, gv_b) = (a.grad_value.unwrap(), b.grad_value.unwrap());
        for x in 0..x_count {
            let want = -h.vf_coef * s.delta[x] * n_x[x] / n;
            prop_assert!((gv_b[x] - gv_a[x] - want).abs() <= F64_SHIFTED * scale, "value grad change at {x}");
        }
    }

    /// [C-PPO-SHIFT], corollary: with `K >= 3`, a context holding a single
    /// pair and a nonzero shift gets a different logit update, by at least
    /// `|delta| S_x min_y pi(y|x) / (2N)` in the missing action.
    // spec: C-PPO-SHIFT C-THM2
    #[test]
    fn ppo_is_not_shift_invariant(s in scenario_with(0.02), d in 0.1..=1e3f64) {
        let alg = Algorithm::Ppo;
        let h = Hyper { epsilon: 0.2, ..s.hyper };
        let (x_count, k) = s.problem.logits.dim();
        prop_assume!(k >= 3);
        let pair = s.pairs[0];
        let pairs = vec![pair];
        let batch = Batch::Sampled(pairs);
        let mut delta = vec![0.0; x_count];
        delta[pair.x] = d;
        let p = s.problem_for(alg);
        let a = evaluate(alg, &h, &p, &batch);
        let b = evaluate(alg, &h, &shifted(&p, &delta), &batch);
        let pi = probabilities(p.logits.view());
        let missing = (0..k).find(|&y| y != pair.y1 && y != pair.y2).unwrap();
        let ratio_sum = (0..2).map(|i| {
            let y = [pair.y1, pair.y2][i];
            pi[[pair.x, y]] / probabilities(p.logits_old.view())[[pair.x, y]]
        }).sum::<f64>();
        let bound = d * ratio_sum * pi[[pair.x, missing]] / 2.0;
        let change = (b.grad[[pair.x, missing]] - a.grad[[pair.x, missing]]).abs();
        prop_assert!(change >= 0.5 * bound, "change {change} below {bound}");
        prop_assert!(change > 0.0);
        // The value update differs too, whenever vf_coef != 0.
        if h.vf_coef > 0.0 {
            prop_assert!(a.grad_value.unwrap()[pair.x] != b.grad_value.unwrap()[pair.x]);
        }
    }

    /// [C-PPO-SHIFT], exact mode: inside the band PPO's policy gradient is
    /// invariant (the batch contains every action in proportion), while its
    /// value gradient moves by `-vf_coef delta / X`.
    // spec: C-PPO-SHIFT C-EXPECTATION
    #[test]
    fn ppo_exact_policy_gradient_is_invariant_inside_the_band(s in scenario_with(0.02)) {
        let alg = Algorithm::Ppo;
        let h = Hyper { epsilon: 0.2, ..s.hyper };
        let p = s.problem_for(alg);
        let a = evaluate(alg, &h, &p, &Batch::Exact);
        let b = evaluate(alg, &h, &shifted(&p, &s.delta), &Batch::Exact);
        let scale = shift_scale(&p, &s.delta) * (1.0 + max_abs(a.grad.iter()));
        assert_all_close("grad", &a.grad, &b.grad, F64_SHIFTED, scale)?;
        let x_count = p.contexts() as f64;
        for (x, (&ga, &gb)) in a.grad_value.unwrap().iter().zip(b.grad_value.unwrap().iter()).enumerate() {
            let want = -h.vf_coef * s.delta[x] / x_count;
            prop_assert!((gb - ga - want).abs() <= F64_SHIFTED * scale, "value grad change at {x}: {} vs {want}", gb - ga);
        }
    }
}

proptest! {
    #![proptest_config(config("tests/proptest-regressions/invariance.txt"))]

    // spec: C-REWARD-SHIFT
    /// The random shift lies on its grid in `[-A, A]`, and for float32-valued
    /// rewards it cancels exactly in a reward difference.
    #[test]
    fn random_shift_cancels_exactly_in_reward_differences(
        amplitude in prop_oneof![Just(1.0f64), Just(10.0), Just(1000.0), 1e-3f64..1e3],
        seed in any::<u64>(),
        text in "[a-z]{1,12}",
        r1 in prop_oneof![Just(0.0f32), 1e-4f32..50.0, -50.0f32..-1e-4],
        r2 in prop_oneof![Just(0.0f32), 1e-4f32..50.0, -50.0f32..-1e-4],
    ) {
        let shift: p3o::reference::shift::RewardShift =
            format!("random:{amplitude}:{seed}").parse().unwrap();
        let d = shift.delta_for_text(&text);
        prop_assert!(d.abs() <= amplitude);
        let step = (amplitude.log2().ceil() - 23.0).exp2();
        prop_assert_eq!(d / step, (d / step).round());
        let (r1, r2) = (f64::from(r1), f64::from(r2));
        prop_assert_eq!((r1 + d) - (r2 + d), r1 - r2);
    }
}

/// The Bradley-Terry loss by hand (Eq. 1): `-log sigma(r_w - r_l)`.
// spec: C-BTL
#[test]
fn bradley_terry_loss_by_hand() {
    use p3o::tolerance::F64_IDENTITY;
    assert!(close(
        bt_loss(0.0, 0.0),
        std::f64::consts::LN_2,
        F64_IDENTITY
    ));
    let want = (1.0 + (-1.5f64).exp()).ln();
    assert!(close(bt_loss(2.0, 0.5), want, F64_IDENTITY));
    assert!(close(bt_loss(0.5, 2.0), want + 1.5, F64_IDENTITY));
}
