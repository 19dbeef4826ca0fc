//! The building blocks, as named structs whose tensors carry HF parameter
//! names (their path in the `VarStore`).

use tch::nn::{Init, Path};
use tch::{TchError, Tensor};

/// `y = x W^T + b` with `W: [out, in]` (torch `nn.Linear`).
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Zero weights, to be loaded; an allocation that fails is an error.
    pub fn new(p: Path, in_dim: i64, out_dim: i64, bias: bool) -> Result<Linear, TchError> {
        Ok(Linear {
            weight: p.f_var("weight", &[out_dim, in_dim], Init::Const(0.0))?,
            bias: bias
                .then(|| p.f_var("bias", &[out_dim], Init::Const(0.0)))
                .transpose()?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// GPT-2's `Conv1D`: `y = x W + b` with `W: [in, out]`.
pub struct Conv1D {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Conv1D {
    pub fn new(p: Path, in_dim: i64, out_dim: i64) -> Result<Conv1D, TchError> {
        Ok(Conv1D {
            weight: p.f_var("weight", &[in_dim, out_dim], Init::Const(0.0))?,
            bias: p.f_var("bias", &[out_dim], Init::Const(0.0))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.weight) + &self.bias
    }
}

pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(p: Path, dim: i64, eps: f64) -> Result<LayerNorm, TchError> {
        Ok(LayerNorm {
            weight: p.f_var("weight", &[dim], Init::Const(1.0))?,
            bias: p.f_var("bias", &[dim], Init::Const(0.0))?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let dim = *x
            .size()
            .last()
            .expect("a tensor with at least one dimension");
        x.layer_norm([dim], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn new(p: Path, count: i64, dim: i64) -> Result<Embedding, TchError> {
        Ok(Embedding {
            weight: p.f_var("weight", &[count, dim], Init::Const(0.0))?,
        })
    }

    pub fn forward(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.weight, ids, -1, false, false)
    }
}

/// The boolean attention mask `[b, 1, t, T]` for `t` queries at the end of
/// `T` keys: key `j` is visible to query `i` when it is not padding and not
/// in the future. Each query also sees itself, so that padding queries (whose
/// outputs are never used) stay finite and cannot leak NaN into real rows.
pub fn attention_mask(key_valid: &Tensor, queries: i64) -> Tensor {
    let keys = key_valid.size()[1];
    let device = key_valid.device();
    if queries == 1 {
        // One new query (a decoding step): every earlier key is in its past,
        // so only padding and the query's own key matter.
        let valid = key_valid.to_kind(tch::Kind::Bool).copy(); // never alias the input
        let _ = valid.narrow(1, keys - 1, 1).fill_(1);
        return valid.view([-1, 1, 1, keys]);
    }
    let q_pos =
        Tensor::arange_start(keys - queries, keys, (tch::Kind::Int64, device)).view([queries, 1]);
    let k_pos = Tensor::arange(keys, (tch::Kind::Int64, device)).view([1, keys]);
    let causal = k_pos.le_tensor(&q_pos); // [t, T]
    let diagonal = k_pos.eq_tensor(&q_pos);
    let valid = key_valid.to_kind(tch::Kind::Bool).view([-1, 1, 1, keys]);
    (causal.unsqueeze(0).unsqueeze(0).logical_and(&valid))
        .logical_or(&diagonal.unsqueeze(0).unsqueeze(0))
}

/// Scaled dot-product attention of `[b, h, t, d]` queries over `[b, h, T, d]`
/// keys and values under a boolean mask.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Tensor {
    Tensor::scaled_dot_product_attention(q, k, v, Some(mask), 0.0, false, None, false)
}
