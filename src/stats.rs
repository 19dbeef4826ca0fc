//! Summary statistics of evaluations: means with standard errors and the
//! head-to-head win-rate matrix ([C-WINRATE]).

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
