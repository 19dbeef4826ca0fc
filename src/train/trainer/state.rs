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
        std::fs::write(path, text).map_err(crate::run_dir::io_at(path))?;
        Ok(())
    }

    /// The counters agree with the checkpoint they sit in (`step-N`) and
    /// with each other.
    pub fn check(&self, step: usize, path: &Path) -> Result<(), TrainError> {
        let bad = |why: String| Err(TrainError::Input(format!("{}: {why}", path.display())));
        if self.step != step {
            return bad(format!("holds step {}, but sits in step-{step}", self.step));
        }
        if !(0..=i64::from(i32::MAX)).contains(&self.optimizer_step) {
            return bad(format!(
                "optimizer_step {} is outside 0..={}",
                self.optimizer_step,
                i32::MAX
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

/// What `Trainer::resume` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resumed {
    /// No complete checkpoint: the run starts at step 0.
    Nothing,
    /// Continues after the checkpoint of this step.
    From(usize),
    /// The run already finished at `steps` (its `final/` is there and its
    /// metrics reach that step): nothing is loaded, run or written.
    Complete(usize),
}

/// The config keys a resumed run may change: how long it runs, how often
/// it evaluates and checkpoints, and its thread count. Every other key
/// shapes the trajectory and must be the checkpoint's.
pub const RESUMABLE_CHANGES: [&str; 4] = ["steps", "eval_every", "checkpoint_every", "threads"];

/// Refuses a resume whose config differs from the checkpoint's in a key
/// outside [`RESUMABLE_CHANGES`], naming the first such key and both
/// values.
pub(super) fn check_same_config(
    saved: &TrainConfig,
    now: &TrainConfig,
    path: &std::path::Path,
) -> Result<(), TrainError> {
    let as_map = |c: &TrainConfig| match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (saved, now) = (as_map(saved), as_map(now));
    for (key, was) in &saved {
        if RESUMABLE_CHANGES.contains(&key.as_str()) {
            continue;
        }
        let is = now.get(key).unwrap_or(&serde_json::Value::Null);
        if is != was {
            return Err(TrainError::Input(format!(
                "config key `{key}`: {is} here but {was} in {}; a resumed run keeps its config (only {} may change)",
                path.display(),
                RESUMABLE_CHANGES.join(", ")
            )));
        }
    }
    Ok(())
}
