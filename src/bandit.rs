//! `p3o bandit`: P3O-V1, P3O-V2 (on pairs and on groups), PPO, online DPO,
//! RLOO, GRPO and p3o-trlx trained on a seeded random contextual bandit,
//! with exact metrics ([C-BANDIT-TRAIN]).

use ndarray::{Array1, Array2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::reference::policy::{expected_reward, mean_kl, probabilities};
use crate::reference::shift::RewardShift;
use crate::reference::{Algorithm, Batch, Hyper, Problem, evaluate, sample_groups, sample_pairs};

/// One trained arm: an algorithm on pairs, or on groups of `--group-size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arm {
    pub algorithm: Algorithm,
    /// Whether it samples groups of `group_size` instead of pairs.
    pub grouped: bool,
}

/// The arms `p3o bandit` trains, in report order.
pub const TRAINED: [Arm; 8] = [
    Arm::pairs(Algorithm::P3oV1),
    Arm::pairs(Algorithm::P3oV2),
    Arm::groups(Algorithm::P3oV2),
    Arm::pairs(Algorithm::Ppo),
    Arm::pairs(Algorithm::Dpo),
    Arm::groups(Algorithm::Rloo),
    Arm::groups(Algorithm::Grpo),
    Arm::pairs(Algorithm::P3oTrlx),
];

impl Arm {
    pub const fn pairs(algorithm: Algorithm) -> Arm {
        Arm {
            algorithm,
            grouped: false,
        }
    }

    pub const fn groups(algorithm: Algorithm) -> Arm {
        Arm {
            algorithm,
            grouped: true,
        }
    }

    /// The responses per context of its samples.
    pub fn group_size(&self, cfg: &BanditConfig) -> usize {
        if self.grouped { cfg.group_size } else { 2 }
    }

    /// Its name in reports: the algorithm's, with `-gG` for groups of a
    /// size other than two (`p3o-v2-g4`).
    pub fn label(&self, cfg: &BanditConfig) -> String {
        match self.group_size(cfg) {
            2 => self.algorithm.name().to_string(),
            g => format!("{}-g{g}", self.algorithm.name()),
        }
    }
}

/// Sizes and hyper-parameters of a bandit run.
#[derive(Clone, Debug, PartialEq)]
pub struct BanditConfig {
    pub contexts: usize,
    pub actions: usize,
    pub steps: usize,
    pub pairs: usize,
    /// `G` of the grouped arms, which sample `2 pairs / G` groups (as many
    /// responses as the pair arms).
    pub group_size: usize,
    pub epochs: usize,
    pub lr: f64,
    /// KL coefficient of the shaped reward (P3O, PPO).
    pub beta: f64,
    /// DPO's beta.
    pub dpo_beta: f64,
    pub epsilon: f64,
    pub vf_coef: f64,
    pub seed: u64,
}

impl Default for BanditConfig {
    fn default() -> Self {
        BanditConfig {
            contexts: 4,
            actions: 8,
            steps: 40,
            pairs: 32,
            group_size: 4,
            epochs: 4,
            lr: 0.5,
            beta: 0.1,
            dpo_beta: 1.0,
            epsilon: 0.2,
            vf_coef: 1.0,
            seed: 0,
        }
    }
}

/// The most table cells (`contexts * actions`) a bandit run holds: a few
/// float64 tables of this size, 32 MiB each.
pub const MAX_CELLS: u64 = 1 << 22;

/// The most iterations (and gradient steps per batch) a run may ask for.
pub const MAX_STEPS: usize = 10_000_000;

/// The most pairs one iteration may sample.
pub const MAX_PAIRS: usize = 1 << 24;

impl BanditConfig {
    /// Refuses sizes and hyper-parameters that would train nothing, train
    /// backwards or not fit ([C-BANDIT-TRAIN]); the message names the flag.
    pub fn check(&self) -> Result<(), String> {
        let cells = self.contexts as u64 * self.actions as u64;
        if cells > MAX_CELLS {
            return Err(format!(
                "--contexts x --actions = {cells} table cells is above the limit of {MAX_CELLS}"
            ));
        }
        let positive = [
            ("--steps", self.steps as f64),
            ("--epochs", self.epochs as f64),
            ("--lr", self.lr),
            ("--dpo-beta", self.dpo_beta),
        ];
        if let Some((flag, v)) = positive.iter().find(|(_, v)| v.is_nan() || *v <= 0.0) {
            return Err(format!("{flag} must be positive, got {v}"));
        }
        for (flag, v, limit) in [
            ("--steps", self.steps, MAX_STEPS),
            ("--epochs", self.epochs, MAX_STEPS),
            ("--pairs", self.pairs, MAX_PAIRS),
        ] {
            if v > limit {
                return Err(format!("{flag} {v} is above the limit of {limit}"));
            }
        }
        if self.group_size < 2 || self.group_size > 2 * self.pairs {
            return Err(format!(
                "--group-size must be in 2..=2 x --pairs ({}), got {}",
                2 * self.pairs,
                self.group_size
            ));
        }
        for (flag, v) in [("--beta", self.beta), ("--vf-coef", self.vf_coef)] {
            if v.is_nan() || v < 0.0 {
                return Err(format!("{flag} must be at least 0, got {v}"));
            }
        }
        Ok(())
    }
}

/// The environment: reference logits (also the initial policy) and the
/// unshifted reward table.
#[derive(Clone, Debug, PartialEq)]
pub struct BanditTask {
    pub logits_ref: Array2<f64>,
    pub rewards: Array2<f64>,
}

impl BanditTask {
    /// Both tables uniform in `[-1, 1]` from a ChaCha8 stream seeded with
    /// `seed`.
    pub fn random(contexts: usize, actions: usize, seed: u64) -> BanditTask {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut uniform = |_| 2.0 * rng.random::<f64>() - 1.0;
        let logits_ref = Array2::from_shape_fn((contexts, actions), &mut uniform);
        let rewards = Array2::from_shape_fn((contexts, actions), &mut uniform);
        BanditTask {
            logits_ref,
            rewards,
        }
    }
}

/// One point of a trajectory: exact metrics after an iteration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct StepMetrics {
    pub step: usize,
    pub kl: f64,
    pub reward: f64,
}

/// Trains one arm on `train_rewards` and reports metrics against the
/// unshifted `task.rewards` after every iteration.
pub fn train(
    arm: Arm,
    cfg: &BanditConfig,
    task: &BanditTask,
    train_rewards: &Array2<f64>,
) -> Vec<StepMetrics> {
    let alg = arm.algorithm;
    let hyper = Hyper {
        beta: if alg == Algorithm::Dpo {
            cfg.dpo_beta
        } else {
            cfg.beta
        },
        epsilon: cfg.epsilon,
        vf_coef: cfg.vf_coef,
        ..Hyper::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut problem = Problem {
        logits: task.logits_ref.clone(),
        logits_old: task.logits_ref.clone(),
        logits_ref: task.logits_ref.clone(),
        rewards: train_rewards.clone(),
        value: alg.uses_value().then(|| Array1::zeros(cfg.contexts)),
    };
    let mut out = Vec::with_capacity(cfg.steps);
    for step in 1..=cfg.steps {
        problem.logits_old = problem.logits.clone();
        let probs_old = probabilities(problem.logits_old.view());
        let x_of = |i, _: &mut ChaCha8Rng| i % cfg.contexts;
        let batch = match arm.group_size(cfg) {
            2 => Batch::Sampled(sample_pairs(&probs_old, cfg.pairs, x_of, &mut rng)),
            g => Batch::Groups(sample_groups(
                &probs_old,
                (2 * cfg.pairs / g).max(1),
                g,
                x_of,
                &mut rng,
            )),
        };
        for _ in 0..cfg.epochs {
            let ev = evaluate(alg, &hyper, &problem, &batch);
            problem.logits.scaled_add(-cfg.lr, &ev.grad);
            if let (Some(v), Some(g)) = (problem.value.as_mut(), ev.grad_value.as_ref()) {
                v.scaled_add(-cfg.lr, g);
            }
        }
        out.push(StepMetrics {
            step,
            kl: mean_kl(problem.logits.view(), task.logits_ref.view()),
            reward: expected_reward(problem.logits.view(), task.rewards.view()),
        });
    }
    out
}

/// One arm's run, and its shifted twin when a shift was asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct AlgorithmRun {
    pub algorithm: Algorithm,
    /// Responses per context of its samples.
    pub group_size: usize,
    /// Its name in reports ([`Arm::label`]).
    pub label: String,
    pub plain: Vec<StepMetrics>,
    pub shifted: Option<Vec<StepMetrics>>,
}

impl AlgorithmRun {
    /// The largest `|metric(r) - metric(r + delta)|` over the trajectory,
    /// KL and reward together.
    pub fn max_shift_difference(&self) -> Option<f64> {
        let shifted = self.shifted.as_ref()?;
        Some(
            self.plain
                .iter()
                .zip(shifted)
                .map(|(a, b)| (a.kl - b.kl).abs().max((a.reward - b.reward).abs()))
                .fold(0.0, f64::max),
        )
    }
}

/// Runs every arm of [`TRAINED`] (on `r`, and on `r + delta` when `shift`
/// is given).
pub fn run_all(cfg: &BanditConfig, shift: Option<RewardShift>) -> Vec<AlgorithmRun> {
    let task = BanditTask::random(cfg.contexts, cfg.actions, cfg.seed);
    let shifted_rewards = shift.map(|s| s.apply(&task.rewards));
    TRAINED
        .iter()
        .map(|&arm| AlgorithmRun {
            algorithm: arm.algorithm,
            group_size: arm.group_size(cfg),
            label: arm.label(cfg),
            plain: train(arm, cfg, &task, &task.rewards),
            shifted: shifted_rewards.as_ref().map(|r| train(arm, cfg, &task, r)),
        })
        .collect()
}

/// Below this, a trajectory difference is reported as rounding.
pub const UNCHANGED_BELOW: f64 = 1e-9;

/// The readable summary table: final metrics and, with a shift, whether each
/// trajectory changed.
pub fn summary_table(runs: &[AlgorithmRun]) -> String {
    let mut s = String::new();
    let with_shift = runs.iter().any(|r| r.shifted.is_some());
    s.push_str(&format!(
        "{:<11} {:>12} {:>12}",
        "algo", "final KL", "final reward"
    ));
    if with_shift {
        s.push_str("  trajectory under r + delta");
    }
    s.push('\n');
    for run in runs {
        let last = run.plain.last().copied().unwrap_or(StepMetrics {
            step: 0,
            kl: 0.0,
            reward: 0.0,
        });
        s.push_str(&format!(
            "{:<11} {:>12.6} {:>12.6}",
            run.label, last.kl, last.reward
        ));
        if let Some(d) = run.max_shift_difference() {
            let verdict = if d < UNCHANGED_BELOW {
                format!("unchanged (max |diff| < {UNCHANGED_BELOW:.0e})")
            } else {
                format!("CHANGED (max |diff| = {d:.4})")
            };
            s.push_str(&format!("  {verdict}"));
        }
        s.push('\n');
    }
    s
}

/// The per-step table: KL and reward of each algorithm every `every` steps.
pub fn trajectory_table(runs: &[AlgorithmRun], every: usize) -> String {
    let mut s = format!("{:>5}", "step");
    for run in runs {
        s.push_str(&format!(" {:>24}", format!("{} KL / reward", run.label)));
    }
    s.push('\n');
    let steps = runs.first().map_or(0, |r| r.plain.len());
    for i in (0..steps).filter(|i| (i + 1) % every.max(1) == 0 || i + 1 == steps) {
        s.push_str(&format!("{:>5}", i + 1));
        for run in runs {
            let m = run.plain[i];
            s.push_str(&format!(" {:>13.4} / {:>8.4}", m.kl, m.reward));
        }
        s.push('\n');
    }
    s
}
