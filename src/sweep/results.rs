//! What a sweep measured ([C-SWEEP]): each seed's pipeline, every run's
//! record and the statistics; `results.json` is this, serialised.

use serde::{Deserialize, Serialize};

use super::analysis::{Analysis, RunRecord};
use super::config::SweepConfig;
use crate::train::reward_model::RewardModelSummary;
use crate::train::sft::SftSummary;

/// A seed's pipeline: what its first stages reached.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeedRecord {
    pub seed: u64,
    pub sft: SftSummary,
    /// Share of the pairs whose label agrees with the gold ordering (ties
    /// left out).
    pub preference_label_agreement: f64,
    pub reward_model: RewardModelSummary,
    pub seconds: f64,
}

/// Everything a sweep measured.
#[derive(Clone, Debug, Serialize)]
pub struct SweepResults {
    pub config: SweepConfig,
    pub seeds: Vec<SeedRecord>,
    pub runs: Vec<RunRecord>,
    pub analysis: Analysis,
}
