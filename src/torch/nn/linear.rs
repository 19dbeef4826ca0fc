//! Affine maps and the token embedding, with HF parameter names (their
//! path in the `VarStore`). Every forward pass is fallible: a shape that
//! disagrees is an error, never a panic.

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

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        x.f_linear(&self.weight, self.bias.as_ref())
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

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        x.f_matmul(&self.weight)?.f_add(&self.bias)
    }
}

/// A lookup table `[count, dim]` (torch `nn.Embedding`).
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn new(p: Path, count: i64, dim: i64) -> Result<Embedding, TchError> {
        Ok(Embedding {
            weight: p.f_var("weight", &[count, dim], Init::Const(0.0))?,
        })
    }

    pub fn forward(&self, ids: &Tensor) -> Result<Tensor, TchError> {
        Tensor::f_embedding(&self.weight, ids, -1, false, false)
    }
}
