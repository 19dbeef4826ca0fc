//! Shared proptest strategies with bounded ranges, and helpers that compare
//! reference outputs. Every property test draws its inputs from here.
#![allow(dead_code)]

use ndarray::{Array1, Array2};
use p3o::reference::{Algorithm, Batch, Hyper, Pair, PairConsts, PairVars, Problem};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::ops::RangeInclusive;

#[cfg(feature = "torch")]
pub mod fused_head;

/// Contexts in 1..=4, actions in 2..=6.
pub fn dims() -> impl Strategy<Value = (usize, usize)> {
    (1usize..=4, 2usize..=6)
}

/// An `[x, k]` table with entries in `range`.
pub fn table(x: usize, k: usize, range: RangeInclusive<f64>) -> impl Strategy<Value = Array2<f64>> {
    prop::collection::vec(range, x * k)
        .prop_map(move |v| Array2::from_shape_vec((x, k), v).unwrap())
}

/// `n` in 1..=8 pairs within `[x, k]`.
pub fn pairs(x: usize, k: usize) -> impl Strategy<Value = Vec<Pair>> {
    prop::collection::vec(
        (0..x, 0..k, 0..k).prop_map(|(x, y1, y2)| Pair { x, y1, y2 }),
        1..=8,
    )
}

/// A generic bandit problem: logits in [-3, 3], the behaviour policy within
/// `old_spread` of them (so ratios straddle the clip band), an independent
/// reference, rewards in [-5, 5] and a value table in [-5, 5].
#[derive(Clone, Debug)]
pub struct Scenario {
    pub problem: Problem,
    pub pairs: Vec<Pair>,
    pub hyper: Hyper,
    /// A per-context shift with `|delta| <= 1e3`.
    pub delta: Vec<f64>,
}

impl Scenario {
    /// The problem as `alg` sees it: the value table only for PPO.
    pub fn problem_for(&self, alg: Algorithm) -> Problem {
        let mut p = self.problem.clone();
        if !alg.uses_value() {
            p.value = None;
        }
        p
    }

    pub fn sampled(&self) -> Batch {
        Batch::Sampled(self.pairs.clone())
    }
}

pub fn scenario_with(old_spread: f64) -> impl Strategy<Value = Scenario> {
    dims().prop_flat_map(move |(x, k)| {
        (
            table(x, k, -3.0..=3.0),
            table(x, k, -old_spread..=old_spread),
            table(x, k, -3.0..=3.0),
            table(x, k, -5.0..=5.0),
            prop::collection::vec(-5.0..=5.0f64, x),
            pairs(x, k),
            hyper(),
            prop::collection::vec(-1e3..=1e3f64, x),
        )
            .prop_map(
                |(logits, spread, logits_ref, rewards, value, pairs, hyper, delta)| {
                    let logits_old = &logits + &spread;
                    Scenario {
                        problem: Problem {
                            logits,
                            logits_old,
                            logits_ref,
                            rewards,
                            value: Some(Array1::from(value)),
                        },
                        pairs,
                        hyper,
                        delta,
                    }
                },
            )
    })
}

/// The default scenario: ratios up to about e^(+-1), so clipping is often active.
pub fn scenario() -> impl Strategy<Value = Scenario> {
    scenario_with(0.5)
}

/// beta in [0, 1.5], epsilon in [0.05, 0.5], vf_coef in [0, 2].
pub fn hyper() -> impl Strategy<Value = Hyper> {
    (0.0..=1.5f64, 0.05..=0.5f64, 0.0..=2.0f64).prop_map(|(beta, epsilon, vf_coef)| Hyper {
        beta,
        epsilon,
        vf_coef,
        ..Hyper::default()
    })
}

/// One pair's constants and variables: log-probabilities in [-6, 0], the
/// current ones within 1 of the behaviour ones.
pub fn pair_point() -> impl Strategy<Value = (PairConsts, PairVars)> {
    (
        prop::array::uniform2(-5.0..=5.0f64),
        prop::array::uniform2(-6.0..=0.0f64),
        prop::array::uniform2(-6.0..=0.0f64),
        prop::array::uniform2(-1.0..=1.0f64),
        -5.0..=5.0f64,
    )
        .prop_map(|(reward, lp_old, lp_ref, step, value)| {
            let consts = PairConsts {
                reward,
                lp_old,
                lp_ref,
            };
            let vars = PairVars {
                lp: [lp_old[0] + step[0], lp_old[1] + step[1]],
                value,
            };
            (consts, vars)
        })
}

pub fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop::sample::select(Algorithm::ALL.to_vec())
}

/// Largest absolute entry.
pub fn max_abs<'a>(it: impl IntoIterator<Item = &'a f64>) -> f64 {
    it.into_iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Asserts `|a - b| <= tol * scale` entry by entry, naming the entry.
pub fn assert_all_close(
    what: &str,
    a: &Array2<f64>,
    b: &Array2<f64>,
    tol: f64,
    scale: f64,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.dim(), b.dim());
    for ((idx, &u), &v) in a.indexed_iter().zip(b.iter()) {
        prop_assert!(
            (u - v).abs() <= tol * scale,
            "{what}{idx:?}: {u} vs {v} (tol {tol} x scale {scale})"
        );
    }
    Ok(())
}

/// The suite's proptest configuration: failures persist in
/// `tests/proptest-regressions/<file>` (committed) and replay first. The
/// path is relative to the package root, where cargo runs tests.
pub fn config(file: &'static str) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(prop::test_runner::FileFailurePersistence::Direct(
            file,
        ))),
        ..ProptestConfig::default()
    }
}

/// Distance (in the clipped quantity) under which a finite difference may
/// cross a kink of [C-CLIP]; such points are skipped.
pub const KINK_MARGIN: f64 = 1e-3;

pub fn near_kink(alg: Algorithm, h: &Hyper, lp: [f64; 2], lp_old: [f64; 2]) -> bool {
    let rho = [0, 1].map(|i| (lp[i] - lp_old[i]).exp());
    let near = |q: f64, edge: f64| (q - edge).abs() < KINK_MARGIN * (1.0 + edge.abs());
    match alg {
        Algorithm::P3oV1 | Algorithm::Ppo | Algorithm::Rloo | Algorithm::Grpo => rho
            .iter()
            .any(|&r| near(r, 1.0 - h.epsilon) || near(r, 1.0 + h.epsilon)),
        // p3o-trlx clips `D = lr1 - lr2`, which moves with `lp1 - lp2`.
        Algorithm::P3oV2 | Algorithm::P3oTrlx => {
            let (l, l_old) = (lp[0] - lp[1], lp_old[0] - lp_old[1]);
            near(l, l_old - h.epsilon) || near(l, l_old + h.epsilon)
        }
        _ => false,
    }
}

/// Runs the `p3o` binary with `args`, feeding `stdin`, and collects its
/// output.
pub fn run_p3o(args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_p3o"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the p3o binary starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("stdin takes the input");
    child.wait_with_output().expect("p3o runs to the end")
}

/// One logit: mostly uniform in `[-1e4, 1e4]`, sometimes masked (`-inf`), a
/// tie (0) or a magnitude of `1e30`.
pub fn logit() -> impl Strategy<Value = f32> + Clone {
    prop_oneof![
        6 => -1e4f32..1e4,
        2 => Just(f32::NEG_INFINITY),
        1 => Just(0.0f32),
        1 => prop_oneof![Just(1e30f32), Just(-1e30f32)],
    ]
}

/// One logit of a long row: quarter steps in `[-8, 8]` (so ties with the
/// maximum are common, yet most chunks of a row hold none), one in 40
/// masked.
pub fn clustered_logit() -> impl Strategy<Value = f32> + Clone {
    prop_oneof![
        39 => (-32i32..=32).prop_map(|k| k as f32 * 0.25),
        1 => Just(f32::NEG_INFINITY),
    ]
}

/// `(V, logits [N, V], targets [N])`: V in 1..=300, N in 1..=3, logits
/// from [`logit`], each target's logit finite ([C-TOKEN-LOGPROB]'s domain).
pub fn logit_rows() -> impl Strategy<Value = (usize, Vec<f32>, Vec<i64>)> {
    rows_of(1..=300, 1..=3, logit())
}

/// As [`logit_rows`] with V in `lengths`, N in `rows` and logits from
/// `logit`.
pub fn rows_of(
    lengths: RangeInclusive<usize>,
    rows: RangeInclusive<usize>,
    logit: impl Strategy<Value = f32> + Clone,
) -> impl Strategy<Value = (usize, Vec<f32>, Vec<i64>)> {
    (lengths, rows)
        .prop_flat_map(move |(v, n)| {
            (
                Just(v),
                prop::collection::vec(logit.clone(), n * v),
                prop::collection::vec(0..v as i64, n),
                prop::collection::vec(-1e4f32..1e4, n),
            )
        })
        .prop_map(|(v, mut x, t, finite)| {
            for (r, (&t, f)) in t.iter().zip(finite).enumerate() {
                let i = r * v + t as usize;
                if !x[i].is_finite() {
                    x[i] = f;
                }
            }
            (v, x, t)
        })
}

/// Whether `P3O_REQUIRE_GPU=1`: on a GPU machine (scripts/gpu-check.sh sets
/// it) a GPU test that finds no device fails instead of skipping.
pub fn gpu_required() -> bool {
    std::env::var_os("P3O_REQUIRE_GPU").is_some_and(|v| v == "1")
}

/// Reports that the running test checked nothing here because `why`: it
/// prints a `SKIPPED` line and, when `P3O_SKIP_LOG` names a file, appends
/// the test's name to it, so that scripts/test.sh counts the test as
/// skipped, not passed.
pub fn skip(why: &str) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("?").to_string();
    println!("SKIPPED {test}: {why}");
    if let Some(path) = std::env::var_os("P3O_SKIP_LOG") {
        // The test binary's name too: two binaries may hold a test of
        // one name.
        let binary = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let line = format!("{binary}::{test}: {why}\n");
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .expect("P3O_SKIP_LOG names a writable file");
    }
}

/// [`skip`] for a test that needs a CUDA device, which fails instead under
/// [`gpu_required`].
pub fn skip_without_gpu(why: &str) {
    if gpu_required() {
        panic!("P3O_REQUIRE_GPU=1, but {why}: this GPU test would check nothing");
    }
    skip(why);
}

/// A seeded bandit with `x` contexts and `k` actions, theta != theta_old.
pub fn fixed_problem(seed: u64, x: usize, k: usize) -> Problem {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut table =
        |scale: f64| Array2::from_shape_fn((x, k), |_| scale * (2.0 * rng.random::<f64>() - 1.0));
    Problem {
        logits: table(1.5),
        logits_old: table(1.0),
        logits_ref: table(1.0),
        rewards: table(2.0),
        value: None,
    }
}

/// Logits `[t, V]` of one unpadded sequence.
#[cfg(feature = "torch")]
pub fn logits(model: &p3o::torch::LanguageModel, ids: &[i64]) -> tch::Tensor {
    let x = tch::Tensor::from_slice(ids).unsqueeze(0);
    let mask = x.ones_like();
    let hidden = model
        .hidden(
            &x,
            &p3o::torch::model::positions_from_mask(&mask),
            &mask,
            None,
        )
        .unwrap();
    model.logits(&hidden).unwrap().squeeze_dim(0)
}
