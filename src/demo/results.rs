//! What the demo measured: every number of `report.md` and `results.json`.

use serde::Serialize;

use super::arm::DemoArm;
use super::config::DemoConfig;
use crate::stats::MeanSe;
use crate::train::evaluate::{Comparison, PolicyEval};
use crate::train::reward_model::RewardModelSummary;
use crate::train::sft::SftSummary;

/// One RL run's curves, read back from its metrics.jsonl.
#[derive(Clone, Debug, Serialize)]
pub struct RunCurves {
    pub arm: DemoArm,
    pub shifted: bool,
    /// (step, train reward_mean) per step.
    pub train_reward: Vec<(f64, f64)>,
    /// Eval points: (step, kl_mean, proxy reward_mean, gold_reward_mean).
    pub eval: Vec<(f64, f64, f64, f64)>,
}

/// The reward-shift experiment for one arm ([C-THM2], [C-PPO-SHIFT],
/// [C-GROUP-SHIFT]).
#[derive(Clone, Debug, Serialize)]
pub struct ShiftResult {
    pub arm: DemoArm,
    /// Largest |difference| of the (unshifted) training rewards per step.
    pub max_reward_difference: f64,
    /// Largest |difference| of the final weights over the largest |weight|.
    pub weight_relative_difference: f64,
}

/// Everything the report shows.
#[derive(Clone, Debug, Serialize)]
pub struct DemoResults {
    pub config: DemoConfig,
    pub sft: SftSummary,
    /// Share of sampled preference pairs whose label agrees with the sign
    /// of the gold difference (ties excluded).
    pub preference_label_agreement: f64,
    pub reward_model: RewardModelSummary,
    pub curves: Vec<RunCurves>,
    /// Final evaluation of the SFT policy and each algorithm's policy.
    pub final_eval: Vec<PolicyEval>,
    pub comparison: Comparison,
    pub shift: Vec<ShiftResult>,
}

/// A mean with its standard error, for tables.
pub fn fmt_mean_se(m: &MeanSe) -> String {
    format!("{:.2} ± {:.2}", m.mean, m.se)
}
