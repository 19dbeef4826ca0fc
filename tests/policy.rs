//! Softmax policies, exact metrics and reward-shift specifications.

mod common;

use common::*;
use ndarray::array;
use p3o::reference::policy::{expected_reward, log_softmax, mean_kl, probabilities};
use p3o::reference::shift::RewardShift;
use p3o::reference::{Algorithm, Batch, Hyper, Problem, evaluate};
use p3o::tolerance::{F64_IDENTITY, F64_ULPS, FD_STEP, FINITE_DIFFERENCE, close};
use proptest::prelude::*;

/// A logit row stored far from zero: `x_k = s - n_k u` with `s = +-m 2^e`
/// (`m` in [1, 1.5), `e` up to 997, so `|s|` up to about 2e300), `u` the
/// spacing of float64 at `s` and `n_k` in 0..=8 with at least one zero.
/// Every `x_k` is stored exactly and `x_k - max = -n_k u` exactly, so the
/// true log-softmax of the stored row is known in closed form.
#[derive(Clone, Debug)]
struct OffsetRow {
    offset: f64,
    spacing: f64,
    steps: Vec<u32>,
}

impl OffsetRow {
    fn stored(&self) -> Vec<f64> {
        self.steps
            .iter()
            .map(|&n| self.offset - n as f64 * self.spacing)
            .collect()
    }

    /// The same row with the offset taken away: `-n_k u`.
    fn centred(&self) -> Vec<f64> {
        self.steps
            .iter()
            .map(|&n| -(n as f64) * self.spacing)
            .collect()
    }

    /// `-n_k u - ln(c + sum_{n_j > 0} exp(-n_j u))` written with `ln_1p`
    /// around the `c` tied maxima, a different formula from the reference's.
    fn exact_log_softmax(&self) -> Vec<f64> {
        let ties = self.steps.iter().filter(|&&n| n == 0).count() as f64;
        let rest: f64 = self
            .steps
            .iter()
            .filter(|&&n| n > 0)
            .map(|&n| (-(n as f64) * self.spacing).exp())
            .sum();
        let lse = ties.ln() + (rest / ties).ln_1p();
        self.centred().iter().map(|&d| d - lse).collect()
    }
}

fn offset_row() -> impl Strategy<Value = OffsetRow> {
    (
        1.0f64..1.5,
        -30i32..=997,
        any::<bool>(),
        prop::collection::vec(0u32..=8, 2..=6),
    )
        .prop_map(|(m, e, negative, mut steps)| {
            let least = *steps.iter().min().unwrap();
            steps.iter_mut().for_each(|n| *n -= least);
            let offset = if negative { -m } else { m } * 2f64.powi(e);
            OffsetRow {
                offset,
                spacing: 2f64.powi(e - 52),
                steps,
            }
        })
}

fn table_of(rows: &[Vec<f64>]) -> ndarray::Array2<f64> {
    let k = rows[0].len();
    ndarray::Array2::from_shape_fn((rows.len(), k), |(x, y)| rows[x][y])
}

proptest! {
    #![proptest_config(config("tests/proptest-regressions/policy.txt"))]

    /// Rows of `pi` sum to one and stay finite for logits up to 1e4 in size;
    /// adding a constant to a row changes nothing.
    // spec: C-NOTATION C-SOFTMAX
    #[test]
    fn softmax_rows_are_distributions(t in dims().prop_flat_map(|(x, k)| table(x, k, -1e4..=1e4)), c in -1e3..=1e3f64) {
        let lp = log_softmax(t.view());
        prop_assert!(lp.iter().all(|v| v.is_finite() && *v <= 0.0));
        for row in probabilities(t.view()).rows() {
            prop_assert!(close(row.sum(), 1.0, F64_IDENTITY));
        }
        let shifted = log_softmax((&t + c).view());
        let scale = 1e-12 * (1.0 + max_abs(t.iter()) + c.abs());
        assert_all_close("shifted", &lp, &shifted, 1.0, scale)?;
    }

    /// The log-softmax of a row stored as far out as 2e300 is its exact
    /// value to float64 rounding: a row `[1e16, 1e16, 0]` gives
    /// `-ln 2` twice, not zero.
    // spec: C-SOFTMAX
    #[test]
    fn log_softmax_is_exact_at_any_offset(row in offset_row()) {
        let got = log_softmax(table_of(&[row.stored()]).view());
        for (k, want) in row.exact_log_softmax().into_iter().enumerate() {
            let v = got[[0, k]];
            prop_assert!((v - want).abs() <= F64_ULPS * (1.0 + want.abs()), "entry {k}: {v} vs {want}");
        }
        let total: f64 = got.iter().map(|v| v.exp()).sum();
        prop_assert!((total - 1.0).abs() <= F64_ULPS * row.steps.len() as f64, "probabilities sum to {total}");
    }

    /// A row scaled by up to 1e300 keeps `lp_i - lp_j = x_i - x_j` to
    /// rounding, its probabilities sum to one and its largest entry is at
    /// least `-ln K`.
    // spec: C-SOFTMAX
    #[test]
    fn log_softmax_of_scaled_rows(base in prop::collection::vec(-3.0f64..=3.0, 2..=6), decades in 0.0f64..=299.5) {
        let scale = 10f64.powf(decades);
        let x: Vec<f64> = base.iter().map(|b| b * scale).collect();
        let lp = log_softmax(table_of(std::slice::from_ref(&x)).view());
        let k = x.len();
        let top = (0..k).max_by(|&i, &j| x[i].total_cmp(&x[j])).unwrap();
        prop_assert!(lp.iter().all(|&v| v <= 0.0));
        prop_assert!(lp[[0, top]] >= -(k as f64).ln() * (1.0 + F64_ULPS));
        let total: f64 = lp.iter().map(|v| v.exp()).sum();
        prop_assert!((total - 1.0).abs() <= F64_ULPS * k as f64, "probabilities sum to {total}");
        for i in 0..k {
            let gap = (lp[[0, i]] - lp[[0, top]]) - (x[i] - x[top]);
            prop_assert!(gap.abs() <= F64_ULPS * (1.0 + x[i].abs() + x[top].abs()), "entry {i}: off by {gap}");
        }
    }

    /// Every algorithm's exact loss and gradient are the same for a policy
    /// stored with rows far from zero as for the same policy stored
    /// centred: the estimators see log-probabilities only.
    // spec: C-SOFTMAX C-EXPECTATION
    #[test]
    fn losses_do_not_depend_on_where_rows_are_stored(rows in prop::collection::vec(offset_row(), 1..=3), r in prop::collection::vec(-5.0f64..=5.0, 18), beta in 0.05f64..=1.0) {
        let k = rows.iter().map(|row| row.steps.len()).min().unwrap();
        let cut = |v: Vec<f64>| v[..k].to_vec();
        let far = table_of(&rows.iter().map(|row| cut(row.stored())).collect::<Vec<_>>());
        let near = table_of(&rows.iter().map(|row| cut(row.centred())).collect::<Vec<_>>());
        let rewards = ndarray::Array2::from_shape_fn(far.dim(), |(x, y)| r[x * 6 + y]);
        let problem = |logits: &ndarray::Array2<f64>| Problem {
            logits: logits.clone(),
            logits_old: logits.clone(),
            logits_ref: logits.clone(),
            rewards: rewards.clone(),
            value: None,
        };
        let hyper = Hyper { beta, epsilon: 0.2, vf_coef: 1.0, ..Hyper::default() };
        for alg in [Algorithm::Vpg, Algorithm::Ppg, Algorithm::P3oV1, Algorithm::P3oV2, Algorithm::Dpo] {
            let a = evaluate(alg, &hyper, &problem(&far), &Batch::Exact);
            let b = evaluate(alg, &hyper, &problem(&near), &Batch::Exact);
            prop_assert!(close(a.loss, b.loss, F64_ULPS), "{alg}: loss {} vs {}", a.loss, b.loss);
            for (u, v) in a.grad.iter().zip(b.grad.iter()) {
                prop_assert!(close(*u, *v, F64_ULPS), "{alg}: grad {u} vs {v}");
            }
        }
    }

    /// `d log pi(y|x) / d theta[x,k] = [k = y] - pi(k|x)`.
    // spec: C-SOFTMAX
    #[test]
    fn log_softmax_gradient(t in dims().prop_flat_map(|(x, k)| table(x, k, -3.0..=3.0)), pick in any::<prop::sample::Index>()) {
        let (x_count, k) = t.dim();
        let (x, y) = { let i = pick.index(x_count * k); (i / k, i % k) };
        let pi = probabilities(t.view());
        for j in 0..k {
            let f = |v: f64| { let mut u = t.clone(); u[[x, j]] = v; log_softmax(u.view())[[x, y]] };
            let fd = (f(t[[x, j]] + FD_STEP) - f(t[[x, j]] - FD_STEP)) / (2.0 * FD_STEP);
            let want = if j == y { 1.0 } else { 0.0 } - pi[[x, j]];
            prop_assert!(close(fd, want, FINITE_DIFFERENCE));
        }
    }

    /// KL is non-negative, zero against itself, and the expected reward lies
    /// between the smallest and largest reward.
    // spec: C-METRICS
    #[test]
    fn metrics_are_bounded(s in scenario_with(3.0)) {
        let p = &s.problem;
        prop_assert!(mean_kl(p.logits.view(), p.logits_ref.view()) >= -F64_IDENTITY);
        prop_assert!(mean_kl(p.logits.view(), p.logits.view()).abs() <= F64_IDENTITY);
        let r = expected_reward(p.logits.view(), p.rewards.view());
        let lo = p.rewards.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = p.rewards.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        prop_assert!(r >= lo - F64_IDENTITY && r <= hi + F64_IDENTITY);
    }

    /// `random:A[:SEED]` draws one delta per context in `[-A, A]`, the same
    /// for the same seed, and prefixes agree across context counts.
    // spec: C-REWARD-SHIFT
    #[test]
    fn random_shift_is_deterministic_and_bounded(a in 0.0..=1e3f64, seed in any::<u64>(), n in 1usize..=16) {
        let spec: RewardShift = format!("random:{a}:{seed}").parse().unwrap();
        let d = spec.deltas(n);
        prop_assert_eq!(&d, &spec.deltas(n));
        prop_assert_eq!(&d[..1], &spec.deltas(1)[..]);
        prop_assert!(d.iter().all(|v| v.abs() <= a));
    }
}

/// A two-action case worked by hand.
// spec: C-METRICS
#[test]
fn kl_of_two_actions_by_hand() {
    let t = array![[0.0, 0.0]];
    let r = array![[0.0, (3.0f64).ln()]];
    // pi = (1/2, 1/2), pi_ref = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3).
    let want = 0.5 * 2.0f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
    assert!(close(mean_kl(t.view(), r.view()), want, 1e-15));
    assert!(close(
        expected_reward(t.view(), array![[1.0, 3.0]].view()),
        2.0,
        1e-15
    ));
}

/// Parsing of the shift forms, and their errors.
// spec: C-REWARD-SHIFT
#[test]
fn shift_specifications() {
    assert_eq!(
        "const:2.5".parse::<RewardShift>(),
        Ok(RewardShift::Const(2.5))
    );
    assert_eq!(
        "random:3".parse::<RewardShift>(),
        Ok(RewardShift::Random {
            amplitude: 3.0,
            seed: 0
        })
    );
    assert_eq!(
        "random:3:9".parse::<RewardShift>(),
        Ok(RewardShift::Random {
            amplitude: 3.0,
            seed: 9
        })
    );
    let errors: Vec<String> = [
        "const:x",
        "random:-1",
        "random:1:-2",
        "random:1:2:3",
        "shift:1",
        "const:inf",
        "",
    ]
    .iter()
    .map(|s| s.parse::<RewardShift>().unwrap_err().to_string())
    .collect();
    insta::assert_snapshot!(errors.join("\n"), @r"
    invalid reward shift `const:x`: C `x` is not a number (expected `const:C` or `random:A[:SEED]`)
    invalid reward shift `random:-1`: A must be non-negative (expected `const:C` or `random:A[:SEED]`)
    invalid reward shift `random:1:-2`: SEED `-2` is not an unsigned integer (expected `const:C` or `random:A[:SEED]`)
    invalid reward shift `random:1:2:3`: unknown form (expected `const:C` or `random:A[:SEED]`)
    invalid reward shift `shift:1`: unknown form (expected `const:C` or `random:A[:SEED]`)
    invalid reward shift `const:inf`: C must be finite (expected `const:C` or `random:A[:SEED]`)
    invalid reward shift ``: unknown form (expected `const:C` or `random:A[:SEED]`)
    ");
}

/// A random source whose every draw is the same 64 bits, so that
/// `random::<f64>()` is a chosen number.
struct Fixed(u64);

impl rand::RngCore for Fixed {
    fn next_u32(&mut self) -> u32 {
        (self.0 >> 32) as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for (i, b) in dst.iter_mut().enumerate() {
            *b = self.0.to_le_bytes()[i % 8];
        }
    }
}

/// Sampling by inversion: action `y` takes the uniforms in
/// `[P(< y), P(<= y))`, so a draw on a boundary goes to the next action, and
/// a draw past a row that sums to less than 1 (rounding) to the last one.
// spec: C-EXPECTATION
#[test]
fn sample_action_inverts_the_cumulative_probabilities() {
    use p3o::reference::estimator::sample_action;
    use rand::Rng;
    let half = 1u64 << 63;
    assert_eq!(Fixed(half).random::<f64>(), 0.5, "the fixed draw is 0.5");
    let even = array![0.5, 0.5];
    assert_eq!(sample_action(even.view(), &mut Fixed(half)), 1);
    assert_eq!(sample_action(even.view(), &mut Fixed(0)), 0);
    let short = array![0.25, 0.25, 0.25];
    assert_eq!(sample_action(short.view(), &mut Fixed(u64::MAX)), 2);
}

/// The stable forms stay finite where the naive ones overflow.
// spec: C-DPO
#[test]
fn softplus_and_sigmoid_at_extreme_arguments() {
    use p3o::reference::losses::{log_sigmoid, sigmoid, softplus};
    assert_eq!(softplus(800.0), 800.0);
    assert_eq!(softplus(-800.0), 0.0);
    assert!(close(softplus(0.0), std::f64::consts::LN_2, F64_IDENTITY));
    assert!(close(
        softplus(1.0),
        1.0 + (-1.0f64).exp().ln_1p(),
        F64_IDENTITY
    ));
    assert_eq!(sigmoid(1000.0), 1.0);
    assert_eq!(sigmoid(-1000.0), 0.0);
    assert_eq!(sigmoid(0.0), 0.5);
    assert_eq!(log_sigmoid(-800.0), -800.0);
}

/// `random:A[:SEED]` for a prompt text is the first draw of a ChaCha8
/// stream seeded with the text's 64-bit FNV-1a hash XOR `SEED` rotated by
/// 32 bits, on the grid of [C-REWARD-SHIFT] (recomputed here from the
/// clause; FNV-1a checked on its published test vectors).
// spec: C-REWARD-SHIFT
#[test]
fn text_shift_is_the_stated_draw() {
    use rand::{Rng, SeedableRng};
    let fnv1a = |text: &str| {
        text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a("foobar"), 0x8594_4171_f739_67e8);
    let (a, seed) = (10.0f64, 7u64);
    let s = (a.log2().ceil() - 23.0).exp2();
    let j = (a / s).floor() as i64;
    let shift = RewardShift::Random { amplitude: a, seed };
    for text in ["cfad:", "the cat", ""] {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(fnv1a(text) ^ seed.rotate_left(32));
        let want = rng.random_range(-j..=j) as f64 * s;
        assert_eq!(shift.delta_for_text(text), want, "{text:?}");
    }
    assert_eq!(RewardShift::Const(-2.5).delta_for_text("x"), -2.5);
    // A zero amplitude is allowed and shifts nothing.
    let zero: RewardShift = "random:0".parse().unwrap();
    assert_eq!(zero.delta_for_text("cfad:"), 0.0);
}

/// `random:LO:HI[:SEED]` draws `c = 2^k`, `k` uniform over the integers of
/// `[log2 LO, log2 HI]`, from the prompt text's stream of [C-REWARD-SHIFT];
/// every exponent of the range occurs over many prompts and none outside it.
// spec: C-REWARD-SCALE
#[test]
fn text_scale_is_a_power_of_two_in_range() {
    use p3o::reference::shift::RewardScale;
    use rand::{Rng, SeedableRng};
    let scale: RewardScale = "random:0.3:40:5".parse().unwrap();
    let fnv1a = |text: &str| {
        text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..400 {
        let text = format!("prompt {i}");
        let c = scale.factor_for_text(&text);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(fnv1a(&text) ^ 5u64.rotate_left(32));
        let k: i32 = rng.random_range(-1..=5);
        assert_eq!(c, f64::from(k).exp2(), "{text:?}");
        seen.insert(k);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec![-1, 0, 1, 2, 3, 4, 5]
    );
    for bad in [
        "random:0:1",
        "random:1",
        "random:2:1",
        "random:1:1e30",
        "random:1:2:x",
        "scale:1:2",
    ] {
        assert!(bad.parse::<RewardScale>().is_err(), "{bad} parsed");
    }
    let one: RewardScale = "random:1:1".parse().unwrap();
    assert_eq!(one.factor_for_text("cfad:"), 1.0);
}
