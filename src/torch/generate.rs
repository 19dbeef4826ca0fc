//! Batched sampling with a KV cache: left-padded prompts, temperature,
//! top-k, top-p, per-row EOS stop, and (on request) the log-probs of the
//! sampled tokens.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::model::{LanguageModel, positions_from_mask};
use super::{Result, TorchError};

/// How to sample.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: i64,
    /// 0 means greedy.
    pub temperature: f64,
    pub top_k: Option<i64>,
    pub top_p: Option<f64>,
    /// Seeds this call's own ChaCha8 stream (one uniform per row and step),
    /// so results do not depend on libtorch's global generator or on other
    /// threads.
    pub seed: u64,
    /// Every token that ends a row (Llama 3 has several); empty: none.
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: i64,
    /// Recompute the whole sequence each step instead of using the cache
    /// (the slow twin the cached path is tested against).
    pub use_cache: bool,
    /// Also return the log-probs of the sampled tokens; without them
    /// `Generation::token_logprobs` holds empty rows, and each step skips a
    /// log-sum-exp over the vocabulary (about 10 % of a small model's
    /// decoding time on the CPU).
    pub logprobs: bool,
}

/// The most new tokens one call may ask for: far beyond any model's
/// positions, and small enough that a prompt length plus it never
/// overflows.
pub const MAX_NEW_TOKENS: i64 = 1 << 20;

/// Positive temperatures below this are refused: dividing float32 logits
/// by them overflows to infinities (0 is greedy decoding).
pub const MIN_TEMPERATURE: f64 = 1e-6;

impl GenerateOptions {
    /// The sampling settings make sense: at least one new token, a finite
    /// temperature of at least 0, `top_k >= 1`, `top_p` in (0, 1]. The
    /// error names the setting as `name` spells it (`--top-p`, `top_p`).
    pub fn check(&self, name: impl Fn(&str) -> String) -> Result<()> {
        let bad = |key: &str, why: String| Err(TorchError::Input(format!("{}: {why}", name(key))));
        if !(1..=MAX_NEW_TOKENS).contains(&self.max_new_tokens) {
            return bad(
                "max_new_tokens",
                format!("{} must be in 1..={MAX_NEW_TOKENS}", self.max_new_tokens),
            );
        }
        if let Some(why) = temperature_problem(self.temperature) {
            return bad("temperature", why);
        }
        if let Some(k) = self.top_k.filter(|&k| k < 1) {
            return bad("top_k", format!("{k} must be at least 1"));
        }
        if let Some(p) = self.top_p.filter(|&p| !(p > 0.0 && p <= 1.0)) {
            return bad("top_p", format!("{p} must be in (0, 1]"));
        }
        Ok(())
    }
}

/// What is wrong with a sampling temperature, if anything: it must be
/// finite, and 0 (greedy) or at least [`MIN_TEMPERATURE`].
pub fn temperature_problem(t: f64) -> Option<String> {
    if !(t.is_finite() && t >= 0.0) {
        Some(format!("{t} must be finite and >= 0"))
    } else if t > 0.0 && t < MIN_TEMPERATURE {
        Some(format!(
            "{t} is below {MIN_TEMPERATURE:e}, where float32 logits overflow; use 0 for greedy decoding"
        ))
    } else {
        None
    }
}

/// Sampled responses, one row per prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// Response tokens, the EOS token included when produced.
    pub response_ids: Vec<Vec<i64>>,
    /// `log pi(token | prefix)` of each response token under the model's
    /// unmodified distribution (temperature 1, no truncation), as the
    /// policy-gradient ratios need; empty rows unless
    /// [`GenerateOptions::logprobs`] was set.
    pub token_logprobs: Vec<Vec<f32>>,
}

/// Left-pads `rows` with `pad` into `[b, T]` ids and a 0/1 mask.
pub fn left_pad(rows: &[Vec<i64>], pad: i64, device: Device) -> (Tensor, Tensor) {
    let t = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * t);
    let mut mask = Vec::with_capacity(rows.len() * t);
    for r in rows {
        let padding = t - r.len();
        ids.extend(std::iter::repeat_n(pad, padding).chain(r.iter().copied()));
        mask.extend(std::iter::repeat_n(0i64, padding).chain(std::iter::repeat_n(1, r.len())));
    }
    let shape = [rows.len() as i64, t as i64];
    (
        Tensor::from_slice(&ids).view(shape).to_device(device),
        Tensor::from_slice(&mask).view(shape).to_device(device),
    )
}

/// Applies temperature, top-k and top-p to float logits `[b, V]`; removed
/// entries become `-inf`.
fn process_logits(logits: &Tensor, o: &GenerateOptions) -> Tensor {
    let mut x = logits / o.temperature;
    if let Some(k) = o.top_k.filter(|&k| k > 0 && k < x.size()[1]) {
        let (top, _) = x.topk(k, -1, true, true);
        let kth = top.narrow(-1, k - 1, 1);
        x = x.masked_fill(&x.lt_tensor(&kth), f64::NEG_INFINITY);
    }
    if let Some(p) = o.top_p.filter(|&p| p < 1.0) {
        let (sorted, index) = x.sort(-1, true);
        let probs = sorted.softmax(-1, Kind::Float);
        // Drop a token when the mass before it already reaches p (the first
        // token always stays).
        let before = probs.cumsum(-1, Kind::Float) - &probs;
        let drop_sorted = before.ge(p);
        let drop = drop_sorted.scatter(-1, &index, &drop_sorted);
        x = x.masked_fill(&drop, f64::NEG_INFINITY);
    }
    x
}

/// Inverse-CDF sampling of one token per row of `probs: [b, V]` with the
/// uniforms `u` (in `[0, 1)`): the number of cumulative probabilities at or
/// below `u`, clamped to the last token with mass.
fn sample_inverse_cdf(probs: &Tensor, u: &[f64]) -> Tensor {
    let cdf = probs.cumsum(-1, Kind::Double);
    let total = cdf.narrow(-1, cdf.size()[1] - 1, 1);
    let u = Tensor::from_slice(u)
        .to_device(probs.device())
        .unsqueeze(-1)
        * &total;
    let index = cdf
        .le_tensor(&u)
        .sum_dim_intlist([-1i64].as_slice(), false, Kind::Int64);
    // Never pick a token whose probability is zero (u landing on a flat end).
    let last_nonzero = probs
        .gt(0.0)
        .to_kind(Kind::Int64)
        .cumsum(-1, Kind::Int64)
        .argmax(-1, false);
    index.minimum(&last_nonzero)
}

/// Runs of consecutive equal prompts (a group's responses,
/// [C-SHARED-PREFIX]), when there are fewer runs than rows: each run's first
/// row and, for every row, its run.
pub fn prompt_runs(prompts: &[Vec<i64>]) -> Option<(Vec<i64>, Vec<i64>)> {
    let mut firsts: Vec<i64> = Vec::new();
    let mut rows = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        if i == 0 || p != &prompts[i - 1] {
            firsts.push(i as i64);
        }
        rows.push(firsts.len() as i64 - 1);
    }
    (firsts.len() < prompts.len()).then_some((firsts, rows))
}

/// [`prompt_runs`] as int64 index tensors on `device`.
fn shared_prefill(prompts: &[Vec<i64>], device: Device) -> Option<(Tensor, Tensor)> {
    prompt_runs(prompts).map(|(firsts, rows)| {
        (
            Tensor::from_slice(&firsts).to_device(device),
            Tensor::from_slice(&rows).to_device(device),
        )
    })
}

/// Generates up to `max_new_tokens` after each prompt.
pub fn generate(
    model: &LanguageModel,
    prompts: &[Vec<i64>],
    o: &GenerateOptions,
) -> Result<Generation> {
    if prompts.is_empty() {
        return Ok(Generation {
            response_ids: vec![],
            token_logprobs: vec![],
        });
    }
    let vocab = model.config.vocab_size();
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(TorchError::Input(format!("prompt {i} is empty")));
        }
        if let Some(&bad) = p.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(TorchError::Input(format!(
                "prompt {i}: token id {bad} outside the vocabulary (0..{vocab})"
            )));
        }
        let needed = (p.len() as i64).saturating_add(o.max_new_tokens);
        if needed > model.config.max_positions() {
            return Err(TorchError::Input(format!(
                "prompt {i}: {} tokens + {} new exceed the model's {} positions",
                p.len(),
                o.max_new_tokens,
                model.config.max_positions()
            )));
        }
    }
    if let Some(why) = temperature_problem(o.temperature) {
        return Err(TorchError::Input(format!("temperature {why}")));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let device = model.device();
    let b = prompts.len();
    let (mut ids, mut mask) = left_pad(prompts, o.pad_token_id, device);
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0) as i64;
    let mut cache = o
        .use_cache
        .then(|| model.new_cache(longest + o.max_new_tokens));
    let mut alive = vec![true; b];
    let mut out_ids = vec![Vec::new(); b];
    let mut out_lp = vec![Vec::new(); b];
    // The tokens fed at the next step (all of them at first, or without a cache).
    let mut step_ids = ids.shallow_clone();
    tch::no_grad(|| -> Result<()> {
        // Real tokens per row so far: a decoding step's position is this
        // minus one (what `positions_from_mask` gives for the last column).
        let mut counts: Vec<i64> = prompts.iter().map(|p| p.len() as i64).collect();
        for step in 0..o.max_new_tokens {
            let t = step_ids.size()[1];
            let step_pos = if o.use_cache && step > 0 {
                let last: Vec<i64> = counts.iter().map(|c| c - 1).collect();
                Tensor::from_slice(&last)
                    .view([b as i64, 1])
                    .to_device(device)
            } else {
                let positions = positions_from_mask(&mask);
                positions.narrow(1, positions.size()[1] - t, t)
            };
            // The first cached step runs each run of equal prompts once and
            // repeats its keys, values and last state for the run's rows.
            let spread = (o.use_cache && step == 0)
                .then(|| shared_prefill(prompts, device))
                .flatten();
            let hidden_last = match (&spread, cache.as_mut()) {
                (Some((firsts, rows)), Some(c)) => {
                    let pick = |x: &Tensor| x.index_select(0, firsts);
                    let h =
                        model.hidden(&pick(&step_ids), &pick(&step_pos), &pick(&mask), Some(c))?;
                    c.select_rows(rows)?;
                    h.narrow(1, t - 1, 1).squeeze_dim(1).index_select(0, rows)
                }
                _ => model
                    .hidden(&step_ids, &step_pos, &mask, cache.as_mut())?
                    .narrow(1, t - 1, 1)
                    .squeeze_dim(1),
            };
            let last = model.row_logits(&hidden_last)?.to_kind(Kind::Float);
            let next = if o.temperature == 0.0 {
                last.argmax(-1, false)
            } else {
                let u: Vec<f64> = (0..b).map(|_| rng.random::<f64>()).collect();
                sample_inverse_cdf(&process_logits(&last, o).softmax(-1, Kind::Double), &u)
            };
            let next_v: Vec<i64> = Vec::<i64>::try_from(&next.to_device(Device::Cpu))?;
            let lp_v: Vec<f32> = if o.logprobs {
                // log softmax at the chosen token, without a [b, V] log-softmax.
                let next_lp = last.gather(-1, &next.unsqueeze(-1), false).squeeze_dim(-1)
                    - last.logsumexp([-1], false);
                Vec::<f32>::try_from(&next_lp.to_device(Device::Cpu))?
            } else {
                Vec::new()
            };
            let mut fed = Vec::with_capacity(b);
            let mut valid = Vec::with_capacity(b);
            for r in 0..b {
                if alive[r] {
                    out_ids[r].push(next_v[r]);
                    if let Some(&lp) = lp_v.get(r) {
                        out_lp[r].push(lp);
                    }
                    if o.eos_token_ids.contains(&next_v[r]) {
                        alive[r] = false;
                    }
                    fed.push(next_v[r]);
                    valid.push(1i64);
                    counts[r] += 1;
                } else {
                    fed.push(o.pad_token_id);
                    valid.push(0);
                }
            }
            if alive.iter().all(|a| !a) {
                break;
            }
            let fed = Tensor::from_slice(&fed)
                .view([b as i64, 1])
                .to_device(device);
            let valid = Tensor::from_slice(&valid)
                .view([b as i64, 1])
                .to_device(device);
            mask = Tensor::cat(&[&mask, &valid], 1);
            step_ids = if o.use_cache {
                fed
            } else {
                ids = Tensor::cat(&[&ids, &fed], 1);
                ids.shallow_clone()
            };
        }
        Ok(())
    })?;
    Ok(Generation {
        response_ids: out_ids,
        token_logprobs: out_lp,
    })
}
