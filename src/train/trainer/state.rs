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

    /// Reads `state.json`; a missing, renamed or malformed field is an error
    /// naming the file.
    pub fn read(path: &Path) -> Result<CheckpointState, TrainError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::Input(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| TrainError::Input(format!("{}: {e}", path.display())))
    }
}
