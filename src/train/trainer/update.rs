//! Updates: each minibatch's backward (a non-finite loss skipped and
//! counted), gradient accumulation over `grad_accum` minibatches, the
//! all-reduce seam, gradient-norm clipping and the AdamW step, the guard
//! that stops a run after `max_nonfinite` skipped updates in a row, and the
//! metrics line that ends a step.

use std::time::Instant;

use tch::Tensor;

use super::Trainer;
use super::metrics::{MetricsLine, SkippedStep, Split, StepMetrics};
use crate::torch::activation_checkpoint::LayerInputs;
use crate::train::error::TrainError;
use crate::train::kernels::{Detached, backward};
use crate::train::optim::learning_rate;

/// Losses and gradient norms of a step's minibatches, and how many
/// minibatches have gradients waiting.
#[derive(Default)]
pub(super) struct Updates {
    pub losses: Vec<f64>,
    pub norms: Vec<f64>,
    pub accumulated: usize,
}

/// The algorithm-specific numbers of a step's metrics line.
pub(super) struct StepStats {
    pub kl_mean: f64,
    /// The sum over every response token of the policy's exact entropy
    /// there ([C-FUSED-HEAD]), from the first epoch's training passes.
    pub entropy_sum: f64,
    pub clip_fraction: f64,
    pub ratio_mean: f64,
    /// Step start, end of generation, end of scoring.
    pub times: [Instant; 3],
}

impl Trainer {
    /// Backpropagates one minibatch's loss (a non-finite loss is skipped and
    /// counted) and steps the optimizer every `grad_accum` minibatches.
    /// With `kept` (a checkpointed pass) the layers' backward follows the
    /// loss's ([C-CHECKPOINTING]).
    pub(super) fn add_minibatch(
        &mut self,
        loss: Tensor,
        value: f64,
        detached: Option<Detached>,
        kept: Option<LayerInputs>,
        u: &mut Updates,
        total_opt_steps: usize,
    ) -> Result<(), TrainError> {
        if !value.is_finite() {
            self.opt.zero_grad();
            u.accumulated = 0;
            return self.count_nonfinite();
        }
        backward(&(loss / self.cfg.grad_accum as f64), detached.as_ref())?;
        // The logits `detached` may hold are not needed by the layers.
        drop(detached);
        if let Some(kept) = kept {
            kept.backward(&self.policy)?;
        }
        u.losses.push(value);
        u.accumulated += 1;
        if u.accumulated == self.cfg.grad_accum {
            self.apply_update(total_opt_steps, &mut u.norms)?;
            u.accumulated = 0;
        }
        Ok(())
    }

    /// Applies gradients still accumulated at the end of a step.
    pub(super) fn finish_updates(
        &mut self,
        u: &mut Updates,
        total_opt_steps: usize,
    ) -> Result<(), TrainError> {
        if u.accumulated > 0 {
            self.apply_update(total_opt_steps, &mut u.norms)?;
            u.accumulated = 0;
        }
        Ok(())
    }

    /// One optimizer step on the summed gradients (combined across
    /// processes first), unless their norm is not finite.
    fn apply_update(
        &mut self,
        total_opt_steps: usize,
        norms: &mut Vec<f64>,
    ) -> Result<(), TrainError> {
        let mut grads: Vec<Tensor> = self
            .opt
            .params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(Tensor::defined)
            .collect();
        self.collective.all_reduce_gradients(&mut grads)?;
        let norm = self.opt.clip_grad_norm(self.cfg.max_grad_norm);
        if !norm.is_finite() {
            self.opt.zero_grad();
            return self.count_nonfinite();
        }
        self.nonfinite_in_row = 0;
        norms.push(norm);
        let lr = learning_rate(
            self.cfg.lr,
            self.cfg.lr_schedule,
            self.cfg.warmup_steps,
            self.opt.step as usize,
            total_opt_steps,
        );
        self.opt.step(lr);
        self.opt.zero_grad();
        Ok(())
    }

    /// Counts a skipped update and stops the run after `max_nonfinite` in a
    /// row.
    fn count_nonfinite(&mut self) -> Result<(), TrainError> {
        self.nonfinite_total += 1;
        self.nonfinite_in_row += 1;
        if self.nonfinite_in_row >= self.cfg.max_nonfinite.max(1) {
            return Err(TrainError::NonFinite(format!(
                "stopped at step {}: {} updates in a row had a non-finite reward, loss or gradient (max_nonfinite = {})",
                self.step + 1,
                self.nonfinite_in_row,
                self.cfg.max_nonfinite
            )));
        }
        Ok(())
    }

    /// Ends a step whose rollout had a non-finite reward: no update, counted.
    pub(super) fn skip_rollout(&mut self) -> Result<MetricsLine, TrainError> {
        self.count_nonfinite()?;
        self.step += 1;
        Ok(MetricsLine::Skipped(SkippedStep {
            step: self.step,
            algorithm: self.cfg.algorithm,
            split: Split::Train,
            skipped: "non-finite reward".into(),
            nonfinite_skipped: self.nonfinite_total,
        }))
    }

    /// The metrics line of a finished step (and the step counter moves on).
    pub(super) fn step_metrics(
        &mut self,
        raw: &[f64],
        responses: &[Vec<i64>],
        st: &StepStats,
        u: &Updates,
        total_opt_steps: usize,
    ) -> MetricsLine {
        self.step += 1;
        let n = raw.len() as f64;
        let mean = raw.iter().sum::<f64>() / n;
        let std = (raw.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
        let tokens: usize = responses.iter().map(Vec::len).sum();
        let mean_of = |v: &[f64]| {
            if v.is_empty() {
                f64::NAN
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let [started, generated, scored] = st.times;
        let lr = learning_rate(
            self.cfg.lr,
            self.cfg.lr_schedule,
            self.cfg.warmup_steps,
            self.opt.step.max(1) as usize - 1,
            total_opt_steps,
        );
        MetricsLine::Step(StepMetrics {
            step: self.step,
            algorithm: self.cfg.algorithm,
            split: Split::Train,
            reward_mean: mean,
            reward_std: std,
            kl_mean: st.kl_mean,
            entropy: st.entropy_sum / tokens.max(1) as f64,
            clip_fraction: st.clip_fraction,
            ratio_mean: st.ratio_mean,
            response_length: tokens as f64 / n,
            loss: mean_of(&u.losses),
            grad_norm: mean_of(&u.norms),
            lr,
            samples_per_s: n / started.elapsed().as_secs_f64(),
            time_generate_s: (generated - started).as_secs_f64(),
            time_score_s: (scored - generated).as_secs_f64(),
            time_update_s: scored.elapsed().as_secs_f64(),
            nonfinite_skipped: self.nonfinite_total,
        })
    }
}
