//! The KL-reward frontier of every arm of `p3o bandit` on many seeded
//! random bandits, from the exact KL and expected reward along training
//! (free of sampling noise in the evaluation), and how the arms' frontiers
//! compare bandit by bandit ([C-BANDIT-FRONTIER], [C-STATS]).

use serde::Serialize;

use crate::bandit::{BanditConfig, TRAINED, run_all};
use crate::stats::{Interval, SignTest, area_up_to, bootstrap_mean, envelope, sign_test};

/// Bootstrap resamples of the mean advantage's interval.
pub const RESAMPLES: usize = 2000;

/// An arm's frontier on one bandit: every `(KL, expected reward)` it
/// reached, over the KL coefficients, starting from the reference policy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Frontier {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

impl Frontier {
    /// The upper envelope: for each KL, the best reward reached at that KL
    /// or less, as the points where it rises (sorted by KL).
    pub fn envelope(&self) -> Vec<(f64, f64)> {
        envelope(&self.points)
    }

    /// The largest KL reached.
    pub fn max_kl(&self) -> f64 {
        self.points.iter().map(|p| p.0).fold(0.0, f64::max)
    }
}

/// The mean advantage of `a`'s envelope over `b`'s on `[0, K]`, `K` the
/// smaller of their largest KLs: `(area_a(K) - area_b(K)) / K`; `None`
/// where either reached no KL at all. The envelopes are extended as steps
/// (each holds its best reward until the next rise) to the budget.
pub fn advantage(a: &Frontier, b: &Frontier) -> Option<f64> {
    let k = a.max_kl().min(b.max_kl());
    if k.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return None;
    }
    let area = |f: &Frontier| area_up_to(&steps(&f.envelope(), k), k);
    Some((area(a)? - area(b)?) / k)
}

/// A rising envelope as a step curve up to `k`: each level held until the
/// next rise, and the last held to `k`.
fn steps(envelope: &[(f64, f64)], k: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(2 * envelope.len() + 1);
    for (i, &(x, y)) in envelope.iter().enumerate() {
        if x > k {
            break;
        }
        out.push((x, y));
        let next = envelope.get(i + 1).map_or(k, |p| p.0.min(k));
        if next > x {
            out.push((next, y));
        }
    }
    out
}

/// How arm `a`'s frontier compares with arm `b`'s over the bandits.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    /// Bandits on which `a`'s envelope has the larger area (the sign
    /// test's positive count), of `bandits` compared.
    pub above: u64,
    pub bandits: usize,
    /// The mean over bandits of [`advantage`], in reward units, and its
    /// 95 % bootstrap interval over bandits.
    pub mean_advantage: f64,
    pub interval: Option<Interval>,
    pub sign: SignTest,
}

/// The frontiers of every arm on `bandits` bandits (seeds `cfg.seed ..
/// cfg.seed + bandits`), one run of every arm per KL coefficient of
/// `betas` (`beta`, and DPO's beta, set to it).
pub fn frontiers(cfg: &BanditConfig, bandits: usize, betas: &[f64]) -> Vec<Vec<Frontier>> {
    (0..bandits as u64)
        .map(|m| {
            let mut arms: Vec<Frontier> = Vec::new();
            for &beta in betas {
                let c = BanditConfig {
                    seed: cfg.seed + m,
                    beta,
                    dpo_beta: beta,
                    ..cfg.clone()
                };
                for (i, run) in run_all(&c, None).into_iter().enumerate() {
                    if arms.len() <= i {
                        let task = crate::bandit::BanditTask::random(c.contexts, c.actions, c.seed);
                        let start = crate::reference::policy::expected_reward(
                            task.logits_ref.view(),
                            task.rewards.view(),
                        );
                        arms.push(Frontier {
                            label: run.label.clone(),
                            points: vec![(0.0, start)],
                        });
                    }
                    arms[i]
                        .points
                        .extend(run.plain.iter().map(|s| (s.kl, s.reward)));
                }
            }
            arms
        })
        .collect()
}

/// Every ordered pair of arms compared over the bandits ([C-STATS]).
pub fn compare(frontiers: &[Vec<Frontier>], seed: u64) -> Vec<Comparison> {
    let arms = TRAINED.len().min(frontiers.first().map_or(0, Vec::len));
    let mut out = Vec::new();
    for i in 0..arms {
        for j in 0..arms {
            if i == j {
                continue;
            }
            let d: Vec<f64> = frontiers
                .iter()
                .filter_map(|bandit| advantage(&bandit[i], &bandit[j]))
                .collect();
            let sign = sign_test(&d);
            out.push(Comparison {
                a: frontiers[0][i].label.clone(),
                b: frontiers[0][j].label.clone(),
                above: sign.positive,
                bandits: d.len(),
                mean_advantage: d.iter().sum::<f64>() / d.len().max(1) as f64,
                interval: bootstrap_mean(&d, 0.95, RESAMPLES, seed),
                sign,
            });
        }
    }
    out
}

/// The readable table of [`compare`]'s rows for the P3O arms against the
/// others.
pub fn comparison_table(rows: &[Comparison]) -> String {
    let mut s = format!(
        "{:<11} {:<11} {:>9} {:>12} {:>24} {:>10}\n",
        "arm", "vs", "above", "advantage", "95 % interval", "sign p"
    );
    for r in rows.iter().filter(|r| r.a.starts_with("p3o-v")) {
        let interval = r
            .interval
            .map_or("-".into(), |i| format!("[{:+.4}, {:+.4}]", i.lo, i.hi));
        s.push_str(&format!(
            "{:<11} {:<11} {:>9} {:>+12.4} {:>24} {:>10.3e}\n",
            r.a,
            r.b,
            format!("{}/{}", r.above, r.bandits),
            r.mean_advantage,
            interval,
            r.sign.p_value
        ));
    }
    s
}
