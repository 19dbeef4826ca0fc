//! Checkpoints: `checkpoints/step-N` (the policy in HF layout, the
//! optimizer's state, PPO's value head and `state.json`), written under a
//! temporary name and renamed, so that a killed run leaves only complete
//! checkpoints; and resuming from the last of them.

use std::path::PathBuf;

use tch::Tensor;

use super::Trainer;
use super::metrics::parse_line;
use super::state::{CheckpointState, Resumed, check_same_config};
use crate::run_dir::{checkpoint_steps, io_at};
use crate::torch::checkpoint::{load_into, read_tensors, write_tensors};
use crate::train::error::TrainError;

impl Trainer {
    fn checkpoint_dir(&self) -> PathBuf {
        self.out.join("checkpoints")
    }

    /// Writes `checkpoints/step-N` through a temporary directory and a
    /// rename.
    pub(super) fn save_checkpoint(&self) -> Result<(), TrainError> {
        let root = self.checkpoint_dir();
        std::fs::create_dir_all(&root).map_err(io_at(&root))?;
        let dir = root.join(format!("step-{}", self.step));
        let tmp = root.join(format!(".step-{}.tmp", self.step));
        let _ = std::fs::remove_dir_all(&tmp);
        self.save_model(&tmp)?;
        write_tensors(&self.opt.state(), &tmp.join("optimizer.safetensors"))?;
        if let Some(v) = &self.value_head {
            let mut vars: Vec<(String, Tensor)> = v.vs.variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            write_tensors(&vars, &tmp.join("value_head.safetensors"))?;
        }
        let state = CheckpointState {
            step: self.step,
            optimizer_step: self.opt.step,
            nonfinite_in_row: self.nonfinite_in_row,
            nonfinite_total: self.nonfinite_total,
            score_stats: self.score_stats,
            config: self.cfg.clone(),
        };
        state.write(&tmp.join("state.json"))?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(io_at(&dir))?;
        Ok(())
    }

    /// Continues from the last complete checkpoint ([`crate::run_dir`]
    /// says which are complete), if any, and returns its step. Everything is
    /// checked before anything changes: the checkpoint's counters, its
    /// config against this one (only [`RESUMABLE_CHANGES`] may differ),
    /// `steps` not below its step, and every tensor file; the metrics lines
    /// after its step are dropped last.
    pub fn resume(&mut self) -> Result<Resumed, TrainError> {
        let Some(&n) = checkpoint_steps(&self.out).last() else {
            // A run killed before its first checkpoint starts again: its
            // metrics lines are written again, identically.
            self.truncate_metrics(None)?;
            return Ok(Resumed::Nothing);
        };
        let dir = self.checkpoint_dir().join(format!("step-{n}"));
        let state_path = dir.join("state.json");
        let state = CheckpointState::read(&state_path)?;
        state.check(n, &state_path)?;
        check_same_config(&state.config, &self.cfg, &state_path)?;
        if self.cfg.steps < n {
            return Err(TrainError::Input(format!(
                "config key `steps`: {} is below the last checkpoint's step {n} ({}); a resumed run cannot go back: set steps >= {n}, or start a new run in another --out",
                self.cfg.steps,
                dir.display()
            )));
        }
        if self.completed_step()? == Some(self.cfg.steps) {
            return Ok(Resumed::Complete(self.cfg.steps));
        }
        if self.policy.lora.spec().is_some() {
            self.policy.load_adapters(&dir)?;
        } else {
            load_into(&self.policy.vs, &dir)?;
        }
        let device = self.policy.device();
        let tensors = read_tensors(&dir.join("optimizer.safetensors"), device)?;
        self.opt
            .load_state(&tensors)
            .map_err(|e| TrainError::Input(format!("{}: {e}", dir.display())))?;
        if let Some(v) = &self.value_head {
            let saved = read_tensors(&dir.join("value_head.safetensors"), device)?;
            for (name, mut var) in v.vs.variables() {
                let src = saved.get(&name).ok_or_else(|| {
                    TrainError::Input(format!("{}: value head `{name}` missing", dir.display()))
                })?;
                if src.size() != var.size() || src.isfinite().all().int64_value(&[]) == 0 {
                    return Err(TrainError::Input(format!(
                        "{}: value head `{name}` has shape {:?} (the head's is {:?}) or values that are not finite",
                        dir.display(),
                        src.size(),
                        var.size()
                    )));
                }
                tch::no_grad(|| var.copy_(src));
            }
        }
        self.score_stats = state.score_stats;
        self.opt.step = state.optimizer_step;
        self.step = n;
        self.nonfinite_in_row = state.nonfinite_in_row;
        self.nonfinite_total = state.nonfinite_total;
        self.truncate_metrics(Some(n)).map(|()| Resumed::From(n))
    }

    /// The last step of a finished run in `out` (one with `final/`): the
    /// largest step its metrics record.
    fn completed_step(&self) -> Result<Option<usize>, TrainError> {
        let metrics = self.out.join("metrics.jsonl");
        if !self.out.join("final").is_dir() || !metrics.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&metrics)?;
        let mut last = None;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            match parse_line(&metrics, i + 1, line) {
                Ok(m) => last = last.max(Some(m.step())),
                // A torn last line: the run did not finish cleanly.
                Err(_) => return Ok(None),
            }
        }
        Ok(last)
    }

    /// Drops the metrics lines that the interrupted run wrote after step
    /// `n` (and a last line that a kill cut short); with no `n`, every line.
    fn truncate_metrics(&self, n: Option<usize>) -> Result<(), TrainError> {
        let metrics = self.out.join("metrics.jsonl");
        let Ok(text) = std::fs::read_to_string(&metrics) else {
            return Ok(());
        };
        let lines: Vec<(usize, &str)> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .collect();
        let mut kept = String::new();
        for (k, &(i, line)) in lines.iter().enumerate() {
            match parse_line(&metrics, i + 1, line) {
                Ok(m) if n.is_some_and(|n| m.step() <= n) => {
                    kept.push_str(line);
                    kept.push('\n');
                }
                Ok(_) => {}
                // The line a kill cut short.
                Err(_) if k + 1 == lines.len() && !line.ends_with('}') => {}
                Err(e) => return Err(e),
            }
        }
        if kept == text {
            return Ok(());
        }
        let tmp = self.out.join(".metrics.jsonl.tmp");
        std::fs::write(&tmp, kept).map_err(io_at(&tmp))?;
        std::fs::rename(&tmp, &metrics).map_err(io_at(&metrics))?;
        Ok(())
    }
}
