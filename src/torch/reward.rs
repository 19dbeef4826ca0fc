//! The reward model: the transformer with a scalar `score` head, read at the
//! last non-padding token (HF `*ForSequenceClassification` convention).

use tch::{Kind, Tensor};

use super::Result;
use super::model::{LanguageModel, positions_from_mask};

/// One reward per row of `ids: [b, T]` with `attention_mask: [b, T]`.
pub fn rewards(model: &LanguageModel, ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
    let positions = positions_from_mask(attention_mask);
    let hidden = model.hidden(ids, &positions, attention_mask, None)?;
    let scores = model.scores(&hidden)?;
    let t = ids.size()[1];
    let index = Tensor::arange(t, (Kind::Int64, ids.device())).unsqueeze(0)
        * attention_mask.to_kind(Kind::Int64);
    let last = index.argmax(-1, true);
    Ok(scores.gather(-1, &last, false).squeeze_dim(-1))
}
