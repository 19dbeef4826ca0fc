//! Summary statistics of evaluations: means with standard errors, the
//! head-to-head win-rate matrix ([C-WINRATE]), and what comparing
//! algorithms across seeds needs ([C-STATS]): bootstrap intervals of a mean
//! over seeds, the sign test of paired differences, Wilson intervals of
//! proportions, and the area under a frontier up to a KL budget.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use statrs::distribution::{Binomial, ContinuousCDF, DiscreteCDF, Normal};

/// A mean and its standard error (sample standard deviation over sqrt(n);
/// zero for fewer than two values, NaN for none).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct MeanSe {
    pub mean: f64,
    pub se: f64,
}

pub fn mean_se(values: &[f64]) -> MeanSe {
    let n = values.len() as f64;
    if values.is_empty() {
        return MeanSe {
            mean: f64::NAN,
            se: f64::NAN,
        };
    }
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return MeanSe { mean, se: 0.0 };
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    MeanSe {
        mean,
        se: (var / n).sqrt(),
    }
}

/// The win-rate matrix of policies whose rewards on the same prompts are
/// `rewards[i][k]` (policy i, prompt k): entry (i, j) is the mean over
/// prompts of 1 when i's reward beats j's, 1/2 on a tie, 0 otherwise, with
/// its standard error over prompts ([C-WINRATE]). Rows of unequal length are
/// compared on their common prefix.
pub fn win_rates(rewards: &[Vec<f64>]) -> Vec<Vec<MeanSe>> {
    rewards
        .iter()
        .map(|a| {
            rewards
                .iter()
                .map(|b| {
                    let outcomes: Vec<f64> = a
                        .iter()
                        .zip(b)
                        .map(|(x, y)| match x.partial_cmp(y) {
                            Some(std::cmp::Ordering::Greater) => 1.0,
                            Some(std::cmp::Ordering::Less) => 0.0,
                            _ => 0.5,
                        })
                        .collect();
                    mean_se(&outcomes)
                })
                .collect()
        })
        .collect()
}

/// A closed interval `[lo, hi]`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
}

/// The `q`-quantile of sorted `xs` by linear interpolation between order
/// statistics (position `q (n - 1)`).
fn quantile_sorted(xs: &[f64], q: f64) -> f64 {
    let pos = q * (xs.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    if i + 1 < xs.len() {
        xs[i] + frac * (xs[i + 1] - xs[i])
    } else {
        xs[i]
    }
}

/// The percentile-bootstrap interval of the mean of `values` at `level`
/// (e.g. 0.95) from `resamples` resamples drawn from `seed` ([C-STATS]);
/// `None` without values or resamples, or for a level outside `(0, 1)`.
pub fn bootstrap_mean(values: &[f64], level: f64, resamples: usize, seed: u64) -> Option<Interval> {
    bootstrap(values.len(), level, resamples, seed, |idx| {
        idx.iter().map(|&i| values[i]).sum::<f64>() / idx.len() as f64
    })
}

/// The percentile-bootstrap interval at `level` of any statistic of `n`
/// units (seeds), given as a function of a resample's unit indices
/// ([C-STATS]); resamples whose statistic is not finite are dropped.
/// `None` as for [`bootstrap_mean`], or when every resample was dropped.
pub fn bootstrap(
    n: usize,
    level: f64,
    resamples: usize,
    seed: u64,
    statistic: impl Fn(&[usize]) -> f64,
) -> Option<Interval> {
    if n == 0 || resamples == 0 || !(level > 0.0 && level < 1.0) {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut idx = vec![0usize; n];
    let mut stats: Vec<f64> = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        for i in idx.iter_mut() {
            *i = rng.random_range(0..n);
        }
        let v = statistic(&idx);
        if v.is_finite() {
            stats.push(v);
        }
    }
    if stats.is_empty() {
        return None;
    }
    stats.sort_by(f64::total_cmp);
    Some(Interval {
        lo: quantile_sorted(&stats, (1.0 - level) / 2.0),
        hi: quantile_sorted(&stats, (1.0 + level) / 2.0),
    })
}

/// The sign test of paired differences ([C-STATS]).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct SignTest {
    pub positive: u64,
    pub negative: u64,
    /// Differences of exactly zero, left out of the test.
    pub ties: u64,
    /// Two-sided exact p-value.
    pub p_value: f64,
}

/// [`SignTest`] of `differences`; NaN differences count as ties.
pub fn sign_test(differences: &[f64]) -> SignTest {
    let positive = differences.iter().filter(|&&d| d > 0.0).count() as u64;
    let negative = differences.iter().filter(|&&d| d < 0.0).count() as u64;
    let ties = differences.len() as u64 - positive - negative;
    let n = positive + negative;
    let p_value = if n == 0 {
        1.0
    } else {
        let tail = Binomial::new(0.5, n)
            .expect("p = 1/2 is a probability")
            .cdf(positive.min(negative));
        (2.0 * tail).min(1.0)
    };
    SignTest {
        positive,
        negative,
        ties,
        p_value,
    }
}

/// The Wilson score interval at `level` of `successes` out of `trials`
/// (successes may be fractional: ties as halves) ([C-STATS]); `None`
/// without trials, for successes outside `[0, trials]` or a level outside
/// `(0, 1)`.
pub fn wilson(successes: f64, trials: f64, level: f64) -> Option<Interval> {
    if !(trials > 0.0 && (0.0..=trials).contains(&successes) && level > 0.0 && level < 1.0) {
        return None;
    }
    let z = Normal::standard().inverse_cdf((1.0 + level) / 2.0);
    let (p, n, z2) = (successes / trials, trials, z * z);
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    Some(Interval {
        lo: (centre - half).max(0.0),
        hi: (centre + half).min(1.0),
    })
}

/// The area under the piecewise-linear curve through `points` `(kl,
/// reward)` (sorted by KL here) from the smallest KL to `budget`
/// ([C-STATS]); `None` where `budget` lies outside the points' KL range or
/// a point is not finite.
pub fn area_up_to(points: &[(f64, f64)], budget: f64) -> Option<f64> {
    if points.iter().any(|(x, y)| !x.is_finite() || !y.is_finite()) {
        return None;
    }
    let mut pts = points.to_vec();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (first, last) = (pts.first()?.0, pts.last()?.0);
    if !(first..=last).contains(&budget) {
        return None;
    }
    let mut area = 0.0;
    for w in pts.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if x0 >= budget {
            break;
        }
        let x_end = x1.min(budget);
        let y_end = if x1 > x0 {
            y0 + (y1 - y0) * (x_end - x0) / (x1 - x0)
        } else {
            y1
        };
        area += 0.5 * (y0 + y_end) * (x_end - x0);
    }
    Some(area)
}

/// The upper envelope of `(kl, reward)` points: for each KL, the best
/// reward reached at that KL or less, as the points where it rises, sorted
/// by KL ([C-STATS]). Points that are not finite are left out.
pub fn envelope(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (kl, r) in pts {
        match out.last() {
            Some(&(_, best)) if r <= best => {}
            _ => out.push((kl, r)),
        }
    }
    out
}

/// The mean over budgets `k` in `[0, budget]` of the best reward reached
/// at KL `k` or less ([C-STATS]): the area under the envelope's step curve
/// over `budget`, with the first point's reward held back to KL 0 (the
/// reference policy's point sits at about 0). `None` without finite points
/// or for a budget that is not positive and finite.
pub fn envelope_mean(points: &[(f64, f64)], budget: f64) -> Option<f64> {
    if !(budget.is_finite() && budget > 0.0) {
        return None;
    }
    let env = envelope(points);
    let first = env.first()?;
    let mut area = 0.0;
    // The level in force from `from` on, until the next rise.
    let (mut from, mut level) = (0.0f64, first.1);
    for &(kl, r) in &env[1..] {
        if kl >= budget {
            break;
        }
        area += level * (kl.max(0.0) - from);
        from = kl.max(0.0);
        level = r;
    }
    area += level * (budget - from);
    Some(area / budget)
}

/// The smallest KL at which the envelope of `points` reaches `reward`
/// ([C-STATS]); `None` where no point does.
pub fn kl_to_reach(points: &[(f64, f64)], reward: f64) -> Option<f64> {
    envelope(points)
        .into_iter()
        .find(|&(_, r)| r >= reward)
        .map(|(kl, _)| kl)
}
