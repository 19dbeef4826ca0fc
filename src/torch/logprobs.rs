//! Token and sequence log-probabilities ([C-TOKEN-LOGPROB],
//! [C-SEQ-LOGPROB]) from a model's logits.

use tch::{Kind, Tensor};

use super::Result;
use super::model::{LanguageModel, positions_from_mask};

/// `log softmax(logits)[target]` for `logits: [.., V]`, `targets: [..]`,
/// computed as the gathered logit minus the log-sum-exp, so no second
/// `[.., V]` log-softmax tensor is made. Float32 or wider.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Tensor {
    let logits = if logits.kind() == Kind::Double {
        logits.shallow_clone()
    } else {
        logits.to_kind(Kind::Float)
    };
    let picked = logits
        .gather(-1, &targets.unsqueeze(-1), false)
        .squeeze_dim(-1);
    picked - logits.logsumexp([-1], false)
}

/// `sum_t mask_t token_lp_t` over the last dimension.
pub fn sequence_logprobs(token_lp: &Tensor, mask: &Tensor) -> Tensor {
    (token_lp * mask.to_kind(token_lp.kind())).sum_dim_intlist(
        [-1i64].as_slice(),
        false,
        token_lp.kind(),
    )
}

/// Per-token log-probs `[b, T-1]` of `ids[:, 1:]` given everything before,
/// for `ids: [b, T]` with `attention_mask: [b, T]` (1 on real tokens, left or
/// right padding). Entry `j` is `log pi(ids[:, j+1] | ids[:, ..=j])`.
pub fn next_token_logprobs(
    model: &LanguageModel,
    ids: &Tensor,
    attention_mask: &Tensor,
) -> Result<Tensor> {
    let t = ids.size()[1];
    let positions = positions_from_mask(attention_mask);
    let hidden = model.hidden(ids, &positions, attention_mask, None)?;
    let logits = model.logits(&hidden.narrow(1, 0, t - 1))?;
    Ok(token_logprobs(&logits, &ids.narrow(1, 1, t - 1)))
}
