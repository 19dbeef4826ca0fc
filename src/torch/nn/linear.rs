//! Affine maps and the token embedding, with HF parameter names (their
//! path in the `VarStore`). Every forward pass is fallible: a shape that
//! disagrees is an error, never a panic.

use tch::nn::{Init, Path};
use tch::{TchError, Tensor};

use super::lora::{Lora, LoraPlan};

/// `y = x W^T + b` with `W: [out, in]` (torch `nn.Linear`), plus a LoRA
/// adapter's `s x A^T B^T` where the plan gave it one ([C-LORA]).
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
}

impl Linear {
    /// Zero weights, to be loaded; an allocation that fails is an error.
    pub fn new(p: Path, in_dim: i64, out_dim: i64, bias: bool) -> Result<Linear, TchError> {
        Ok(Linear {
            weight: p.f_var("weight", &[out_dim, in_dim], Init::Const(0.0))?,
            bias: bias
                .then(|| p.f_var("bias", &[out_dim], Init::Const(0.0)))
                .transpose()?,
            lora: None,
        })
    }

    /// [`Linear::new`] for a transformer layer's projection, with the
    /// adapter `plan` gives it, if any.
    pub fn adapted(
        p: Path,
        in_dim: i64,
        out_dim: i64,
        bias: bool,
        plan: &LoraPlan,
    ) -> Result<Linear, TchError> {
        let lora = plan.adapter(&p, in_dim, out_dim)?;
        Ok(Linear {
            lora,
            ..Linear::new(p, in_dim, out_dim, bias)?
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        Lora::add_delta(
            self.lora.as_ref(),
            x,
            x.f_linear(&self.weight, self.bias.as_ref())?,
        )
    }
}

/// GPT-2's `Conv1D`: `y = x W + b` with `W: [in, out]`, plus an adapter
/// (whose factors are laid out as for [`Linear`]: PEFT's `fan_in_fan_out`).
pub struct Conv1D {
    pub weight: Tensor,
    pub bias: Tensor,
    pub lora: Option<Lora>,
}

impl Conv1D {
    pub fn new(p: Path, in_dim: i64, out_dim: i64) -> Result<Conv1D, TchError> {
        Ok(Conv1D {
            weight: p.f_var("weight", &[in_dim, out_dim], Init::Const(0.0))?,
            bias: p.f_var("bias", &[out_dim], Init::Const(0.0))?,
            lora: None,
        })
    }

    /// [`Conv1D::new`] with the adapter `plan` gives it, if any.
    pub fn adapted(
        p: Path,
        in_dim: i64,
        out_dim: i64,
        plan: &LoraPlan,
    ) -> Result<Conv1D, TchError> {
        let lora = plan.adapter(&p, in_dim, out_dim)?;
        Ok(Conv1D {
            lora,
            ..Conv1D::new(p, in_dim, out_dim)?
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        Lora::add_delta(
            self.lora.as_ref(),
            x,
            x.f_matmul(&self.weight)?.f_add(&self.bias)?,
        )
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
