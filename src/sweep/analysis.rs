//! The statistics of a sweep ([C-SWEEP], [C-STATS]), from the runs'
//! records alone: binned frontiers, envelope means up to KL budgets, paired
//! differences per seed, the KL needed to match P3O-V2, and pooled win
//! rates. No model is loaded here, so every number can be recomputed from
//! `results.json`.

use serde::{Deserialize, Serialize};

use crate::stats::{
    Interval, SignTest, bootstrap, bootstrap_mean, envelope_mean, kl_to_reach, sign_test, wilson,
};

/// Bootstrap resamples of every interval.
pub const RESAMPLES: usize = 2000;
/// The level of every interval.
pub const LEVEL: f64 = 0.95;
/// The arms the paired comparisons start from.
pub const P3O_ARMS: [&str; 2] = ["p3o-v1", "p3o-v2"];
/// The arm whose reward the KL-match table targets.
pub const MATCH_ARM: &str = "p3o-v2";

/// One evaluation on the held-out prompts during a run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    pub step: usize,
    /// Mean sequence KL to the SFT policy, nats per response.
    pub kl: f64,
    pub proxy: f64,
    pub gold: f64,
}

/// What one run of one arm at one KL coefficient on one seed left behind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub seed: u64,
    pub beta: f64,
    pub arm: String,
    pub eval: Vec<EvalPoint>,
    /// The final policy's mean KL and per-prompt mean rewards on the
    /// held-out prompts (every arm sampled with the same seeds).
    pub final_kl: f64,
    pub final_proxy: Vec<f64>,
    pub final_gold: Vec<f64>,
    /// Wall time of training and evaluation.
    pub seconds: f64,
}

/// The reward a statistic is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RewardKind {
    Proxy,
    Gold,
}

impl RewardKind {
    pub const ALL: [RewardKind; 2] = [RewardKind::Proxy, RewardKind::Gold];

    pub fn name(self) -> &'static str {
        match self {
            RewardKind::Proxy => "proxy",
            RewardKind::Gold => "gold",
        }
    }

    fn of(self, p: &EvalPoint) -> f64 {
        match self {
            RewardKind::Proxy => p.proxy,
            RewardKind::Gold => p.gold,
        }
    }

    fn finals(self, r: &RunRecord) -> &[f64] {
        match self {
            RewardKind::Proxy => &r.final_proxy,
            RewardKind::Gold => &r.final_gold,
        }
    }
}

/// A mean over seeds with its bootstrap interval and the seeds it covers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct OverSeeds {
    pub mean: f64,
    pub interval: Option<Interval>,
    pub seeds: usize,
}

/// One arm's evaluation points in one KL bin `[lo, hi)` (no `hi` for the
/// last, open above).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BinRow {
    pub reward: RewardKind,
    pub arm: String,
    pub lo: f64,
    pub hi: Option<f64>,
    /// Mean over seeds of each seed's mean KL in the bin.
    pub kl: f64,
    pub value: OverSeeds,
}

/// One arm's envelope mean up to a KL budget.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EnvelopeRow {
    pub reward: RewardKind,
    pub arm: String,
    pub budget: f64,
    pub value: OverSeeds,
}

/// `a` minus `b` of the envelope mean up to a budget, seed by seed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PairedRow {
    pub reward: RewardKind,
    pub a: String,
    pub b: String,
    pub budget: f64,
    pub differences: Vec<f64>,
    pub value: OverSeeds,
    pub sign: SignTest,
}

/// The KL at which `arm` reaches the reward P3O-V2's envelope has at the
/// budget, against P3O-V2's own, over the seeds where both reach it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KlMatchRow {
    pub reward: RewardKind,
    pub arm: String,
    pub budget: f64,
    /// Seeds where the arm reaches the target, of `seeds`.
    pub reached: usize,
    pub seeds: usize,
    /// Mean KLs over the seeds where the arm reaches it.
    pub arm_kl: f64,
    pub match_kl: f64,
    /// `arm_kl / match_kl`, with its bootstrap interval over those seeds.
    pub ratio: f64,
    pub interval: Option<Interval>,
}

/// `a`'s win rate over `b` at one KL coefficient, pooled over seeds and
/// prompts (ties count half).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WinRow {
    pub reward: RewardKind,
    pub beta: f64,
    pub a: String,
    pub b: String,
    pub wins: f64,
    pub trials: usize,
    pub rate: f64,
    pub interval: Option<Interval>,
}

/// Everything [`analyse`] computes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Analysis {
    pub bins: Vec<BinRow>,
    pub envelopes: Vec<EnvelopeRow>,
    pub paired: Vec<PairedRow>,
    pub kl_match: Vec<KlMatchRow>,
    pub win_rates: Vec<WinRow>,
}

/// What the statistics are taken over.
pub struct Layout<'a> {
    pub arms: &'a [String],
    pub seeds: &'a [u64],
    pub betas: &'a [f64],
    /// Increasing bin edges of KL; the last bin is open above.
    pub kl_bins: &'a [f64],
    pub kl_budgets: &'a [f64],
}

/// A seeded bootstrap stream per table row, so that a row's interval does
/// not depend on which rows come before it.
fn row_seed(parts: &[&str]) -> u64 {
    // FNV-1a: stable across builds and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.join("/").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn over_seeds(values: &[f64], key: &[&str]) -> OverSeeds {
    let n = values.len();
    OverSeeds {
        mean: if n == 0 {
            f64::NAN
        } else {
            values.iter().sum::<f64>() / n as f64
        },
        interval: bootstrap_mean(values, LEVEL, RESAMPLES, row_seed(key)),
        seeds: n,
    }
}

/// Every `(kl, reward)` of `arm` on `seed`: all coefficients, all steps.
fn points(records: &[RunRecord], arm: &str, seed: u64, reward: RewardKind) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter(|r| r.arm == arm && r.seed == seed)
        .flat_map(|r| r.eval.iter().map(move |p| (p.kl, reward.of(p))))
        .collect()
}

fn bin_index(edges: &[f64], kl: f64) -> usize {
    edges.iter().rposition(|&e| kl >= e).unwrap_or(0)
}

/// The statistics of [C-SWEEP] over `records`.
pub fn analyse(records: &[RunRecord], layout: &Layout) -> Analysis {
    let mut out = Analysis {
        bins: Vec::new(),
        envelopes: Vec::new(),
        paired: Vec::new(),
        kl_match: Vec::new(),
        win_rates: Vec::new(),
    };
    for reward in RewardKind::ALL {
        let rn = reward.name();
        // Per arm and seed, the points once.
        let pts: Vec<Vec<Vec<(f64, f64)>>> = layout
            .arms
            .iter()
            .map(|a| {
                layout
                    .seeds
                    .iter()
                    .map(|&s| points(records, a, s, reward))
                    .collect()
            })
            .collect();
        for (ai, arm) in layout.arms.iter().enumerate() {
            for (bi, &lo) in layout.kl_bins.iter().enumerate() {
                let hi = layout.kl_bins.get(bi + 1).copied();
                let (mut kls, mut values) = (Vec::new(), Vec::new());
                for seed_pts in &pts[ai] {
                    let inside: Vec<&(f64, f64)> = seed_pts
                        .iter()
                        .filter(|p| bin_index(layout.kl_bins, p.0) == bi)
                        .collect();
                    if !inside.is_empty() {
                        let n = inside.len() as f64;
                        kls.push(inside.iter().map(|p| p.0).sum::<f64>() / n);
                        values.push(inside.iter().map(|p| p.1).sum::<f64>() / n);
                    }
                }
                if values.is_empty() {
                    continue;
                }
                out.bins.push(BinRow {
                    reward,
                    arm: arm.clone(),
                    lo,
                    hi,
                    kl: kls.iter().sum::<f64>() / kls.len() as f64,
                    value: over_seeds(&values, &["bin", rn, arm, &bi.to_string()]),
                });
            }
        }
        // Envelope means per arm, budget and seed (NaN without points).
        let env: Vec<Vec<Vec<f64>>> = pts
            .iter()
            .map(|arm_pts| {
                layout
                    .kl_budgets
                    .iter()
                    .map(|&k| {
                        arm_pts
                            .iter()
                            .map(|p| envelope_mean(p, k).unwrap_or(f64::NAN))
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let finite =
            |v: &[f64]| -> Vec<f64> { v.iter().copied().filter(|x| x.is_finite()).collect() };
        for (ai, arm) in layout.arms.iter().enumerate() {
            for (ki, &k) in layout.kl_budgets.iter().enumerate() {
                out.envelopes.push(EnvelopeRow {
                    reward,
                    arm: arm.clone(),
                    budget: k,
                    value: over_seeds(&finite(&env[ai][ki]), &["env", rn, arm, &k.to_string()]),
                });
            }
        }
        for a in P3O_ARMS {
            let Some(ai) = layout.arms.iter().position(|x| x == a) else {
                continue;
            };
            for (bi, b) in layout.arms.iter().enumerate() {
                if bi == ai {
                    continue;
                }
                for (ki, &k) in layout.kl_budgets.iter().enumerate() {
                    let d: Vec<f64> = env[ai][ki]
                        .iter()
                        .zip(&env[bi][ki])
                        .map(|(x, y)| x - y)
                        .filter(|d| d.is_finite())
                        .collect();
                    out.paired.push(PairedRow {
                        reward,
                        a: a.to_string(),
                        b: b.clone(),
                        budget: k,
                        value: over_seeds(&d, &["paired", rn, a, b, &k.to_string()]),
                        sign: sign_test(&d),
                        differences: d,
                    });
                }
            }
        }
        if let Some(mi) = layout.arms.iter().position(|x| x == MATCH_ARM) {
            for (ai, arm) in layout.arms.iter().enumerate() {
                for &k in layout.kl_budgets {
                    let (mut arm_kl, mut match_kl) = (Vec::new(), Vec::new());
                    for (arm_pts, match_pts) in pts[ai].iter().zip(&pts[mi]) {
                        // The reward P3O-V2's envelope holds at the budget.
                        let Some(r) = envelope_at(match_pts, k) else {
                            continue;
                        };
                        let (Some(x), Some(y)) =
                            (kl_to_reach(arm_pts, r), kl_to_reach(match_pts, r))
                        else {
                            continue;
                        };
                        arm_kl.push(x);
                        match_kl.push(y);
                    }
                    let n = arm_kl.len();
                    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
                    let ratio_of = |idx: &[usize]| {
                        let x: f64 = idx.iter().map(|&i| arm_kl[i]).sum();
                        let y: f64 = idx.iter().map(|&i| match_kl[i]).sum();
                        x / y
                    };
                    let all: Vec<usize> = (0..n).collect();
                    out.kl_match.push(KlMatchRow {
                        reward,
                        arm: arm.clone(),
                        budget: k,
                        reached: n,
                        seeds: layout.seeds.len(),
                        arm_kl: if n == 0 { f64::NAN } else { mean(&arm_kl) },
                        match_kl: if n == 0 { f64::NAN } else { mean(&match_kl) },
                        ratio: if n == 0 { f64::NAN } else { ratio_of(&all) },
                        interval: bootstrap(
                            n,
                            LEVEL,
                            RESAMPLES,
                            row_seed(&["match", rn, arm, &k.to_string()]),
                            ratio_of,
                        ),
                    });
                }
            }
        }
        for &beta in layout.betas {
            for a in P3O_ARMS {
                if !layout.arms.iter().any(|x| x == a) {
                    continue;
                }
                for b in layout.arms.iter().filter(|b| b.as_str() != a) {
                    let (mut wins, mut trials) = (0.0, 0usize);
                    for &seed in layout.seeds {
                        let find = |arm: &str| {
                            records
                                .iter()
                                .find(|r| r.arm == arm && r.seed == seed && r.beta == beta)
                        };
                        let (Some(x), Some(y)) = (find(a), find(b)) else {
                            continue;
                        };
                        for (u, v) in reward.finals(x).iter().zip(reward.finals(y)) {
                            trials += 1;
                            wins += match u.partial_cmp(v) {
                                Some(std::cmp::Ordering::Greater) => 1.0,
                                Some(std::cmp::Ordering::Less) => 0.0,
                                _ => 0.5,
                            };
                        }
                    }
                    out.win_rates.push(WinRow {
                        reward,
                        beta,
                        a: a.to_string(),
                        b: b.clone(),
                        wins,
                        trials,
                        rate: if trials == 0 {
                            f64::NAN
                        } else {
                            wins / trials as f64
                        },
                        interval: wilson(wins, trials as f64, LEVEL),
                    });
                }
            }
        }
    }
    out
}

/// The envelope's level at KL `k`: the best reward at KL `k` or less, or
/// the first point's where none lies that low (as [`envelope_mean`] holds
/// it back to 0).
pub fn envelope_at(points: &[(f64, f64)], k: f64) -> Option<f64> {
    let env = crate::stats::envelope(points);
    let first = env.first()?.1;
    Some(
        env.iter()
            .take_while(|p| p.0 <= k)
            .last()
            .map_or(first, |p| p.1),
    )
}
