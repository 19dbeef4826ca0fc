//! Scoring rollouts: per-token and sequence log-probs of responses under a
//! model ([C-SEQ-LOGPROB]), PPO's value head, and the reward sources of
//! training and evaluation (built-in functions or an HF reward model).

use std::path::Path;

use tch::{Device, Kind, Tensor};

#[cfg(feature = "testing")]
use super::builtin::NAN_REWARD;
use super::builtin::{self, BUILTIN_REWARD, TOY_GOLD_REWARD};
use super::error::TrainError;
use super::kernels::{Detached, Kernels};
use crate::torch::generate::left_pad;
use crate::torch::model::positions_from_mask;
use crate::torch::nn::Linear;
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
/// computing the LM head only on the response positions.
pub fn token_window(
    model: &LanguageModel,
    head: Option<&ValueHead>,
    prompts: &[Vec<i64>],
    responses: &[Vec<i64>],
) -> Result<TokenWindow, TrainError> {
    Ok(token_window_with(model, head, prompts, responses, &Kernels::Torch)?.0)
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
    let w = response_window(model, prompts, responses)?;
    let (lp, detached) = kernels.token_logprobs(&model.logits(&w.hidden)?, &w.targets)?;
    Ok((
        TokenWindow {
            lp: lp * &w.mask,
            values: head
                .map(|h| h.values(&w.hidden))
                .transpose()?
                .map(|v| v * &w.mask),
            mask: w.mask,
        },
        detached,
    ))
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
    let w = response_window(model, prompts, responses)?;
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

fn response_window(
    model: &LanguageModel,
    prompts: &[Vec<i64>],
    responses: &[Vec<i64>],
) -> Result<ResponseWindow, TrainError> {
    let rows: Vec<Vec<i64>> = prompts
        .iter()
        .zip(responses)
        .map(|(p, r)| p.iter().chain(r).copied().collect())
        .collect();
    let (ids, attn) = left_pad(&rows, 0, model.device());
    let t = ids.size()[1];
    let l = responses.iter().map(Vec::len).max().unwrap_or(0) as i64;
    let hidden = model.hidden(&ids, &positions_from_mask(&attn), &attn, None)?;
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
    sequence_logprobs_with(model, prompts, responses, &Kernels::Torch)
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
