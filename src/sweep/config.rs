//! The keys of `p3o sweep` ([C-SWEEP]): seeds, KL coefficients, the KL bins
//! and budgets of the report, and the pipeline's stages (the demo's keys).

use serde::{Deserialize, Serialize};

use crate::demo::DemoConfig;
use crate::train::error::ConfigError;

/// The sweep's configuration; `sweep.toml` in the output directory holds it,
/// and a sweep resumes only under the same one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// Seeds `stages.seed .. stages.seed + seeds - 1`.
    pub seeds: usize,
    /// KL coefficients: `beta` of every arm, DPO's beta included.
    pub betas: Vec<f64>,
    /// Increasing KL bin edges of the report (nats); the last bin is open.
    pub kl_bins: Vec<f64>,
    /// KL budgets of the envelope means (nats).
    pub kl_budgets: Vec<f64>,
    /// The pipeline's keys (`p3o demo`'s); `beta`, `dpo_beta` and
    /// `reward_shift` are not used.
    pub stages: DemoConfig,
}

/// The most seeds a sweep takes.
pub const MAX_SEEDS: usize = 1000;

impl SweepConfig {
    /// The default sweep (about an hour on 2 cores) or the `--quick` one.
    pub fn defaults(quick: bool) -> SweepConfig {
        if quick {
            SweepConfig {
                seeds: 2,
                betas: vec![0.05],
                kl_bins: vec![0.0, 1.0, 2.0, 4.0],
                kl_budgets: vec![1.0, 2.0, 4.0],
                stages: DemoConfig {
                    reward_shift: String::new(),
                    eval_every: 5,
                    ..DemoConfig::quick()
                },
            }
        } else {
            SweepConfig {
                seeds: 5,
                betas: vec![0.03, 0.1],
                kl_bins: vec![0.0, 0.5, 1.0, 2.0, 4.0, 8.0],
                kl_budgets: vec![1.0, 2.0, 4.0],
                stages: DemoConfig {
                    reward_shift: String::new(),
                    ..DemoConfig::default()
                },
            }
        }
    }

    /// The seeds in order.
    pub fn seed_list(&self) -> Vec<u64> {
        (0..self.seeds as u64)
            .map(|i| self.stages.seed + i)
            .collect()
    }

    /// The ranges of the sweep's own keys; the stages are checked by
    /// [`DemoConfig::load`], and every run's config by the sweep before
    /// anything trains.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_SEEDS).contains(&self.seeds) {
            return Err(ConfigError(format!(
                "--seeds: {} is not in 1..={MAX_SEEDS}",
                self.seeds
            )));
        }
        let positive_list = |what: &str, v: &[f64], zero_ok: bool| -> Result<(), ConfigError> {
            if v.is_empty() {
                return Err(ConfigError(format!("{what}: name at least one")));
            }
            for (i, &x) in v.iter().enumerate() {
                if !(x.is_finite() && (x > 0.0 || (zero_ok && x == 0.0))) {
                    return Err(ConfigError(format!(
                        "{what}: {x} must be finite and {}",
                        if zero_ok { "not negative" } else { "positive" }
                    )));
                }
                if v[..i].contains(&x) {
                    return Err(ConfigError(format!("{what}: {x} is named twice")));
                }
            }
            Ok(())
        };
        positive_list("--betas", &self.betas, false)?;
        positive_list("--kl-bins", &self.kl_bins, true)?;
        positive_list("--kl-budgets", &self.kl_budgets, false)?;
        if self.kl_bins.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ConfigError("--kl-bins: the edges must increase".into()));
        }
        Ok(())
    }
}
