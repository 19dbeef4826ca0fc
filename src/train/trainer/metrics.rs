//! The lines of a run's `metrics.jsonl`, as typed records: what the trainer
//! writes is what the demo and the tests read back, so a renamed or missing
//! field is an error instead of a silent 0 or NaN.
//!
//! JSON has no NaN or infinity: a non-finite number is written as `null`
//! and read back as NaN.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::train::config::Algorithm;
use crate::train::error::TrainError;

/// Which kind of line: a training step or an evaluation on held-out
/// prompts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Eval,
}

/// One training step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepMetrics {
    /// Steps completed, this one included.
    pub step: usize,
    pub algorithm: Algorithm,
    pub split: Split,
    /// Mean and standard deviation of the (unshifted) rewards.
    #[serde(with = "nullable")]
    pub reward_mean: f64,
    #[serde(with = "nullable")]
    pub reward_std: f64,
    /// Sequence-level KL to the reference, from the samples.
    #[serde(with = "nullable")]
    pub kl_mean: f64,
    /// Mean per-token entropy of the policy's next-token distribution over
    /// the response tokens, exact at each sampled prefix (the first
    /// epoch's training passes).
    #[serde(with = "nullable")]
    pub entropy: f64,
    #[serde(with = "nullable")]
    pub clip_fraction: f64,
    #[serde(with = "nullable")]
    pub ratio_mean: f64,
    /// Mean response tokens.
    #[serde(with = "nullable")]
    pub response_length: f64,
    /// Mean minibatch loss and gradient norm (NaN when no update ran).
    #[serde(with = "nullable")]
    pub loss: f64,
    #[serde(with = "nullable")]
    pub grad_norm: f64,
    /// Learning rate of the step's last update.
    #[serde(with = "nullable")]
    pub lr: f64,
    #[serde(with = "nullable")]
    pub samples_per_s: f64,
    #[serde(with = "nullable")]
    pub time_generate_s: f64,
    #[serde(with = "nullable")]
    pub time_score_s: f64,
    #[serde(with = "nullable")]
    pub time_update_s: f64,
    /// Updates skipped as non-finite so far.
    pub nonfinite_skipped: usize,
}

/// A step whose rollout had a non-finite reward: no update was made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkippedStep {
    pub step: usize,
    pub algorithm: Algorithm,
    pub split: Split,
    /// Why (`non-finite reward`).
    pub skipped: String,
    pub nonfinite_skipped: usize,
}

/// An evaluation on the held-out prompts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalMetrics {
    /// Steps completed before it (0: the starting point).
    pub step: usize,
    pub algorithm: Algorithm,
    pub split: Split,
    #[serde(with = "nullable")]
    pub reward_mean: f64,
    #[serde(with = "nullable")]
    pub kl_mean: f64,
    /// Under `gold_reward`, when the config names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gold_reward_mean: Option<f64>,
}

/// Any line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetricsLine {
    Step(StepMetrics),
    Skipped(SkippedStep),
    Eval(EvalMetrics),
}

impl MetricsLine {
    /// The step count of the line.
    pub fn step(&self) -> usize {
        match self {
            MetricsLine::Step(m) => m.step,
            MetricsLine::Skipped(m) => m.step,
            MetricsLine::Eval(m) => m.step,
        }
    }

    /// The line as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("metrics serialise")
    }
}

/// Every line of the metrics file at `path`; a line that is not a metrics
/// line is an error naming it.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsLine>, TrainError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TrainError::Input(format!("{}: {e}", path.display())))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_line(path, i + 1, l))
        .collect()
}

/// Line `number` of the metrics file at `path`.
pub fn parse_line(path: &Path, number: usize, line: &str) -> Result<MetricsLine, TrainError> {
    serde_json::from_str(line).map_err(|e| {
        TrainError::Input(format!(
            "{} line {number}: not a metrics line of this version ({e})",
            path.display()
        ))
    })
}

/// Non-finite floats as `null`, and `null` back as NaN.
mod nullable {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}
