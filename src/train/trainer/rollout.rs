//! A step's rollout: its prompts (a seeded permutation of the prompt set per
//! pass), the responses sampled from the behaviour policy with their token
//! log-probs, and their float64 rewards, also scaled by `c(x)` under
//! `--reward-scale` and shifted by `delta(x)` under `--reward-shift`.

use std::time::Instant;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::Trainer;
use crate::train::error::TrainError;
use crate::train::seed::SeedPurpose;

/// The sampled responses of one step, row by row.
pub(super) struct Rollout {
    pub prompt_ids: Vec<Vec<i64>>,
    pub responses: Vec<Vec<i64>>,
    /// `log pi_old` of every response token, from the sampling pass.
    pub token_logprobs: Vec<Vec<f32>>,
    /// The rewards as scored, and as trained on: times `c(prompt)`, plus
    /// `delta(prompt)`.
    pub raw: Vec<f64>,
    pub shifted: Vec<f64>,
    /// Step start and end of generation.
    pub started: Instant,
    pub generated: Instant,
}

impl Rollout {
    /// Whether a reward (shifted) is NaN or infinite.
    pub fn has_nonfinite_reward(&self) -> bool {
        self.shifted.iter().any(|r| !r.is_finite())
    }
}

impl Trainer {
    /// The `count` prompts of step `step`: a seeded permutation of the
    /// prompt set per pass over it, this process's share of them.
    fn batch_prompts(&self, step: usize, count: usize) -> Vec<String> {
        let n = self.prompts.len();
        self.collective
            .shard(count)
            .map(|i| {
                let j = step * count + i;
                let mut order: Vec<usize> = (0..n).collect();
                let pass = (j / n) as u64;
                order.shuffle(&mut ChaCha8Rng::seed_from_u64(
                    SeedPurpose::PromptOrder.seed(self.cfg.seed, pass, 0),
                ));
                self.prompts[order[j % n]].clone()
            })
            .collect()
    }

    /// Samples `per_prompt` responses to each of `count` prompts of this
    /// step and scores them.
    pub(super) fn rollout(&self, count: usize, per_prompt: usize) -> Result<Rollout, TrainError> {
        let started = Instant::now();
        let prompts = self.batch_prompts(self.step, count);
        let mut texts = Vec::with_capacity(per_prompt * prompts.len());
        let mut prompt_ids = Vec::with_capacity(texts.capacity());
        for t in prompts {
            let ids = self.tokenizer.encode(&t)?;
            for _ in 0..per_prompt {
                prompt_ids.push(ids.clone());
                texts.push(t.clone());
            }
        }
        let seed = SeedPurpose::Sampling.seed(self.cfg.seed, self.step as u64, 0);
        let sampled = self.sample(&prompt_ids, seed)?;
        let generated = Instant::now();
        let raw = self
            .reward
            .score(&self.tokenizer, &prompt_ids, &sampled.response_ids)?;
        let shifted = raw
            .iter()
            .zip(&texts)
            .map(|(r, t)| {
                let scaled = self.scale.map_or(*r, |c| c.factor_for_text(t) * r);
                scaled + self.shift.map_or(0.0, |s| s.delta_for_text(t))
            })
            .collect();
        Ok(Rollout {
            prompt_ids,
            responses: sampled.response_ids,
            token_logprobs: sampled.token_logprobs,
            raw,
            shifted,
            started,
            generated,
        })
    }
}
