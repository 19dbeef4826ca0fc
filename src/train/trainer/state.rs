//! `state.json` of a checkpoint: the counters a resumed run continues from,
//! and the config that wrote it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::train::config::TrainConfig;
use crate::train::error::TrainError;

/// Everything of a run's state that is not a tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointState {
    /// Steps completed.
    pub step: usize,
    /// AdamW steps taken (the bias corrections and the schedule need it).
    pub optimizer_step: i64,
    /// Skipped (non-finite) updates in a row, and in all.
    pub nonfinite_in_row: usize,
    pub nonfinite_total: usize,
    /// PPO's running (count, mean, M2) of the scores (`reward_scaling`).
    pub score_stats: [f64; 3],
    pub config: TrainConfig,
}

impl CheckpointState {
    pub fn write(&self, path: &Path) -> Result<(), TrainError> {
        let text = serde_json::to_string_pretty(self).expect("the state serialises");
        std::fs::write(path, text)?;
        Ok(())
    }

    /// The counters agree with the checkpoint they sit in (`step-N`) and
    /// with each other.
    pub fn check(&self, step: usize, path: &Path) -> Result<(), TrainError> {
        let bad = |why: String| Err(TrainError::Input(format!("{}: {why}", path.display())));
        if self.step != step {
            return bad(format!("holds step {}, but sits in step-{step}", self.step));
        }
        if self.optimizer_step < 0 {
            return bad(format!(
                "optimizer_step {} is negative",
                self.optimizer_step
            ));
        }
        if self.nonfinite_in_row > self.nonfinite_total {
            return bad(format!(
                "nonfinite_in_row {} exceeds nonfinite_total {}",
                self.nonfinite_in_row, self.nonfinite_total
            ));
        }
        if !self.score_stats.iter().all(|v| v.is_finite()) || self.score_stats[0] < 0.0 {
            return bad(format!(
                "score_stats {:?} are not a running count, mean and M2",
                self.score_stats
            ));
        }
        Ok(())
    }

    /// Reads `state.json`; a missing, renamed or malformed field is an error
    /// naming the file.
    pub fn read(path: &Path) -> Result<CheckpointState, TrainError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::Input(format!("{}: {e}", path.display())))?;
        crate::json::from_str_strict(&text)
            .map_err(|e| TrainError::Input(format!("{}: {e}", path.display())))
    }
}
