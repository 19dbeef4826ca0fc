//! Scoring rollouts: per-token and sequence log-probs of responses under a
//! model ([C-SEQ-LOGPROB]), PPO's value head, and the reward sources of
//! training and evaluation (built-in functions or an HF reward model).

use std::path::Path;

use tch::{Device, Kind, Tensor};

#[cfg(feature = "testing")]
use super::builtin::NAN_REWARD;
use super::builtin::{self, BUILTIN_REWARD, TOY_GOLD_REWARD};
use super::error::TrainError;
use super::kernels::{Detached, HeadLogprobs, Kernels};
use crate::torch::activation_checkpoint::LayerInputs;
use crate::torch::generate::left_pad;
use crate::torch::model::positions_from_mask;
use crate::torch::nn::{KvCache, Linear};
use crate::torch::reward::rewards as model_rewards;
use crate::torch::tokenizer::Tokenizer;
use crate::torch::{Head, LanguageModel, TorchError};

/// A scalar head `v_head: Linear(hidden, 1)` in its own variable store.
pub struct ValueHead {
    pub vs: tch::nn::VarStore,
    pub linear: Linear,
}

impl ValueHead {
    /// The scalar value of every hidden state `[.., H]` -> `[..]`.
    pub fn values(&self, hidden: &Tensor) -> Result<Tensor, TorchError> {
        Ok(self
            .linear
            .forward(&hidden.to_kind(self.linear.weight.kind()))?
            .squeeze_dim(-1))
    }
}

/// Per-token quantities of response windows `[n, L]`: log-probs, values
/// (with a value head) and the mask of real tokens (responses right-aligned).
pub struct TokenWindow {
    pub lp: Tensor,
    /// Each position's entropy of the policy's next-token distribution
    /// ([C-FUSED-HEAD]), without gradient; zero after padding. Only in
    /// passes with gradients.
    pub entropy: Option<Tensor>,
    pub values: Option<Tensor>,
    pub mask: Tensor,
}

/// Where rewards come from.
pub enum Reward {
    /// `builtin:vowels`: vowels over the longest possible response.
    Vowels { max_new_tokens: i64 },
    /// `builtin:toy-gold`: the toy task's gold reward ([C-TOY-GOLD]).
    ToyGold,
    /// `builtin:nan`: always NaN, to exercise the non-finite guard (feature
    /// `testing`).
    #[cfg(feature = "testing")]
    Nan,
    /// An HF reward model (score head).
    Model(Box<LanguageModel>),
}

impl Reward {
    /// Reads the reward named by config key `key`: a built-in name or an HF
    /// reward-model directory.
    pub fn load(
        spec: &str,
        key: &str,
        max_new_tokens: i64,
        device: Device,
    ) -> Result<Reward, TrainError> {
        match spec {
            BUILTIN_REWARD => Ok(Reward::Vowels { max_new_tokens }),
            TOY_GOLD_REWARD => Ok(Reward::ToyGold),
            #[cfg(feature = "testing")]
            NAN_REWARD => Ok(Reward::Nan),
            _ => {
                let dir = Path::new(spec);
                if !dir.join("config.json").is_file() {
                    return Err(TrainError::Input(format!(
                        "config key `{key}`: `{spec}` is neither a built-in reward ({BUILTIN_REWARD}, {TOY_GOLD_REWARD}) nor an HF directory"
                    )));
                }
                Ok(Reward::Model(Box::new(LanguageModel::load(
                    dir,
                    Head::Score,
                    device,
                    Kind::Float,
                )?)))
            }
        }
    }

    /// Rewards of each prompt + response. The response's end-of-text token,
    /// when generated, is not part of what is scored ([C-BT-TRAIN]).
    pub fn score(
        &self,
        tokenizer: &Tokenizer,
        prompt_ids: &[Vec<i64>],
        responses: &[Vec<i64>],
    ) -> Result<Vec<f64>, TrainError> {
        let bodies: Vec<&[i64]> = responses
            .iter()
            .map(|r| match r.split_last() {
                Some((&last, body)) if tokenizer.is_eos(last) => body,
                _ => r.as_slice(),
            })
            .collect();
        match self {
            Reward::Vowels { max_new_tokens } => bodies
                .iter()
                .map(|b| {
                    Ok(builtin::vowel_reward(
                        &tokenizer.decode(b)?,
                        *max_new_tokens,
                    ))
                })
                .collect(),
            Reward::ToyGold => prompt_ids
                .iter()
                .zip(&bodies)
                .map(|(p, b)| {
                    Ok(crate::toy::gold_reward(
                        &tokenizer.decode(p)?,
                        &tokenizer.decode(b)?,
                    ))
                })
                .collect(),
            #[cfg(feature = "testing")]
            Reward::Nan => Ok(vec![f64::NAN; responses.len()]),
            Reward::Model(m) => {
                let rows: Vec<Vec<i64>> = prompt_ids
                    .iter()
                    .zip(&bodies)
                    .map(|(p, b)| p.iter().chain(b.iter()).copied().collect())
                    .collect();
                let (ids, mask) = left_pad(&rows, 0, m.device());
                let r = tch::no_grad(|| model_rewards(m, &ids, &mask))?;
                Ok(
                    Vec::<f64>::try_from(&r.to_kind(Kind::Double).to_device(Device::Cpu))
                        .map_err(TorchError::from)?,
                )
            }
        }
    }
}

/// Token log-probs (and values) of each response after its prompt,
/// computing the LM head only on the response positions, under autograd
/// on the materialised logits (so a plain `backward` of a loss built on
/// them reaches the model: SFT's loss).
pub fn token_window(
    model: &LanguageModel,
    head: Option<&ValueHead>,
    prompts: &[Vec<i64>],
    responses: &[Vec<i64>],
) -> Result<TokenWindow, TrainError> {
    Ok(token_window_with(model, head, prompts, responses, &Kernels::MATERIALISED)?.0)
}

/// [`token_window`] with the token log-probs from `kernels`; an outside
/// backend also returns what its backward needs ([`Kernels::backward`]).
pub fn token_window_with(
    model: &LanguageModel,
    head: Option<&ValueHead>,
    prompts: &[Vec<i64>],
    responses: &[Vec<i64>],
    kernels: &Kernels,
) -> Result<(TokenWindow, Option<Detached>), TrainError> {
    let w = response_window(model, prompts, responses, None)?;
    window_of(model, head, w, kernels)
}

/// [`token_window_with`], and with `checkpoint` through a checkpointed pass
/// ([C-CHECKPOINTING]): the layers' activations are then not kept but
/// recomputed by the returned [`LayerInputs::backward`], which must follow
/// the loss's backward.
pub fn token_window_checkpointed(
    model: &LanguageModel,
    head: Option<&ValueHead>,
    prompts: &[Vec<i64>],
    responses: &[Vec<i64>],
    kernels: &Kernels,
    checkpoint: bool,
) -> Result<(TokenWindow, Option<Detached>, Option<LayerInputs>), TrainError> {
    let mut kept = None;
    let slot = checkpoint.then_some(&mut kept);
    let w = response_window(model, prompts, responses, slot)?;
    let (window, detached) = window_of(model, head, w, kernels)?;
    Ok((window, detached, kept))
}

/// The token log-probs (and values) of a response window.
fn window_of(
    model: &LanguageModel,
    head: Option<&ValueHead>,
    w: ResponseWindow,
    kernels: &Kernels,
) -> Result<(TokenWindow, Option<Detached>), TrainError> {
    let out = kernels.head_logprobs(model, &w.hidden, &w.targets)?;
    Ok((
        TokenWindow {
            lp: out.lp * &w.mask,
            entropy: out.entropy.map(|e| e * &w.mask),
            values: head
                .map(|h| h.values(&w.hidden))
                .transpose()?
                .map(|v| v * &w.mask),
            mask: w.mask,
        },
        out.detached,
    ))
}

/// Whether every group of `size` consecutive rows carries one prompt, so
/// that [`shared_prefix_logprobs`] applies to them.
pub fn groups_share_prompts(prompts: &[Vec<i64>], size: usize) -> bool {
    size > 0
        && prompts.len().is_multiple_of(size)
        && prompts.chunks(size).all(|g| g.iter().all(|p| p == &g[0]))
}

/// Sequence log-probs `[n]` of `responses` (rows `p * size .. (p + 1) *
/// size` answer `prompts[p]`), and the sums `[n]` of their tokens'
/// entropies ([C-FUSED-HEAD], no gradient; where the pass has gradients),
/// with each prompt run through the model once
/// and its keys and values repeated for its group ([C-SHARED-PREFIX]); the
/// gradient flows back through every response into the prompt's states.
/// Equal, up to float summation order, to the masked sums of
/// [`token_window_with`] over the same rows.
pub fn shared_prefix_logprobs(
    model: &LanguageModel,
    prompts: &[Vec<i64>],
    responses: &[Vec<i64>],
    size: usize,
    kernels: &Kernels,
) -> Result<(Tensor, Option<Tensor>, Option<Detached>), TrainError> {
    let (out, mask) = shared_prefix_tokens(model, prompts, responses, size, kernels)?;
    let sum = |t: Tensor| (t * &mask).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float);
    Ok((sum(out.lp), out.entropy.map(sum), out.detached))
}

/// [`shared_prefix_logprobs`] without gradient, summed by the kernels'
/// sequence sums (the reference model's log-probs).
pub fn shared_prefix_sequence_logprobs(
    model: &LanguageModel,
    prompts: &[Vec<i64>],
    responses: &[Vec<i64>],
    size: usize,
    kernels: &Kernels,
) -> Result<Tensor, TrainError> {
    let (out, mask) =
        tch::no_grad(|| shared_prefix_tokens(model, prompts, responses, size, kernels))?;
    kernels.sequence_sums(&(out.lp * &mask), &mask)
}

/// Token log-probs and entropies `[n, l]` of left-aligned responses over
/// their shared prompts (with what the kernels' backward needs), and their
/// 0/1 mask.
fn shared_prefix_tokens(
    model: &LanguageModel,
    prompts: &[Vec<i64>],
    responses: &[Vec<i64>],
    size: usize,
    kernels: &Kernels,
) -> Result<(HeadLogprobs, Tensor), TrainError> {
    let n = responses.len();
    if size == 0 || prompts.len() * size != n {
        return Err(TrainError::Input(format!(
            "{} responses are not groups of {size} over {} prompts",
            n,
            prompts.len()
        )));
    }
    if let Some(p) = prompts.iter().position(Vec::is_empty) {
        return Err(TrainError::Input(format!("prompt {p} is empty")));
    }
    let device = model.device();
    let l = responses.iter().map(Vec::len).max().unwrap_or(0) as i64;
    if l == 0 {
        let empty = Tensor::zeros([n as i64, 0], (Kind::Float, device));
        let out = HeadLogprobs {
            lp: empty.shallow_clone(),
            entropy: None,
            detached: None,
        };
        return Ok((out, empty));
    }
    // Row r of the responses reads prompt r / size.
    let rows: Vec<i64> = (0..n).map(|r| (r / size) as i64).collect();
    let rows = Tensor::from_slice(&rows).to_device(device);
    let repeat = |x: &Tensor| x.index_select(0, &rows);
    let (prompt_ids, prompt_valid) = left_pad(prompts, 0, device);
    let tp = prompt_ids.size()[1];
    let mut cache = KvCache::differentiable(model.num_layers());
    let prompt_hidden = model.hidden(
        &prompt_ids,
        &positions_from_mask(&prompt_valid),
        &prompt_valid,
        Some(&mut cache),
    )?;
    // The prompt's last state predicts the first response token.
    let first = repeat(&prompt_hidden.narrow(1, tp - 1, 1));
    let (targets, valid) = right_pad(responses, device);
    let hidden = if l > 1 {
        // Response tokens but the last, after the repeated prompt keys.
        cache.select_rows(&rows).map_err(TorchError::from)?;
        let key_valid = Tensor::cat(&[repeat(&prompt_valid), valid.narrow(1, 0, l - 1)], 1);
        let positions = positions_from_mask(&key_valid).narrow(1, tp, l - 1);
        let rest = model.hidden(
            &targets.narrow(1, 0, l - 1),
            &positions,
            &key_valid,
            Some(&mut cache),
        )?;
        Tensor::cat(&[first, rest], 1)
    } else {
        first
    };
    let out = kernels.head_logprobs(model, &hidden, &targets)?;
    Ok((out, valid.to_kind(Kind::Float)))
}

/// Right-pads `rows` with token 0 into `[n, l]` ids and a 0/1 mask.
fn right_pad(rows: &[Vec<i64>], device: Device) -> (Tensor, Tensor) {
    let l = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * l);
    let mut mask = Vec::with_capacity(rows.len() * l);
    for r in rows {
        ids.extend(r.iter().copied().chain(std::iter::repeat_n(0, l - r.len())));
        mask.extend(std::iter::repeat_n(1i64, r.len()).chain(std::iter::repeat_n(0, l - r.len())));
    }
    let shape = [rows.len() as i64, l as i64];
    (
        Tensor::from_slice(&ids).view(shape).to_device(device),
        Tensor::from_slice(&mask).view(shape).to_device(device),
    )
}

/// The value head's estimates `[n, l]` at the response positions (zero
/// after padding), without the LM head: PPO's behaviour pass, whose token
/// log-probs come from sampling.
pub fn value_window(
    model: &LanguageModel,
    head: &ValueHead,
    prompts: &[Vec<i64>],
    responses: &[Vec<i64>],
) -> Result<Tensor, TrainError> {
    let w = response_window(model, prompts, responses, None)?;
    Ok(head.values(&w.hidden)? * &w.mask)
}

/// Prompt + response rows, left-padded, through the body: the hidden states
/// `[n, l, H]` that predict the last `l` tokens (`l` the longest response;
/// shorter responses are right-aligned), those tokens `[n, l]`, and the
/// mask `[n, l]` (1 on response tokens).
struct ResponseWindow {
    hidden: Tensor,
    targets: Tensor,
    mask: Tensor,
}

/// With `kept`, through a checkpointed pass whose layer inputs land there.
fn response_window(
    model: &LanguageModel,
    prompts: &[Vec<i64>],
    responses: &[Vec<i64>],
    kept: Option<&mut Option<LayerInputs>>,
) -> Result<ResponseWindow, TrainError> {
    let rows: Vec<Vec<i64>> = prompts
        .iter()
        .zip(responses)
        .map(|(p, r)| p.iter().chain(r).copied().collect())
        .collect();
    let (ids, attn) = left_pad(&rows, 0, model.device());
    let t = ids.size()[1];
    let l = responses.iter().map(Vec::len).max().unwrap_or(0) as i64;
    let positions = positions_from_mask(&attn);
    let hidden = match kept {
        None => model.hidden(&ids, &positions, &attn, None)?,
        Some(slot) => {
            let (hidden, inputs) = model.hidden_checkpointed(&ids, &positions, &attn)?;
            *slot = Some(inputs);
            hidden
        }
    };
    let lens: Vec<i64> = responses.iter().map(|r| r.len() as i64).collect();
    let start = Tensor::from_slice(&lens).to_device(model.device()).neg() + l;
    Ok(ResponseWindow {
        // Position j's logits predict token j + 1: the window predicting the
        // last l tokens starts at t - 1 - l (a prompt has at least one token).
        hidden: hidden.narrow(1, t - 1 - l, l),
        targets: ids.narrow(1, t - l, l),
        mask: Tensor::arange(l, (Kind::Int64, model.device()))
            .unsqueeze(0)
            .ge_tensor(&start.unsqueeze(1))
            .to_kind(Kind::Float),
    })
}

/// Sequence log-probs `[n]` without gradient: the masked sums of
/// [`token_window`].
pub fn sequence_logprobs(
    model: &LanguageModel,
    prompts: &[Vec<i64>],
    responses: &[Vec<i64>],
) -> Result<Tensor, TrainError> {
    sequence_logprobs_with(model, prompts, responses, &Kernels::TORCH)
}

/// [`sequence_logprobs`] with the token log-probs and their sums from
/// `kernels`.
pub fn sequence_logprobs_with(
    model: &LanguageModel,
    prompts: &[Vec<i64>],
    responses: &[Vec<i64>],
    kernels: &Kernels,
) -> Result<Tensor, TrainError> {
    let (w, _) = tch::no_grad(|| token_window_with(model, None, prompts, responses, kernels))?;
    kernels.sequence_sums(&w.lp, &w.mask)
}
