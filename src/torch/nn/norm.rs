//! Normalisations over the last dimension: LayerNorm (GPT-2, GPT-NeoX,
//! GPT-J) and RMSNorm (Llama, Mistral, Qwen2, Qwen3, and Qwen3's per-head
//! query and key norms).

use tch::nn::{Init, Path};
use tch::{Kind, TchError, Tensor};

/// `(x - mean) / sqrt(var + eps) * weight + bias` (torch `nn.LayerNorm`).
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

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let dim = self.weight.size()[0];
        x.f_layer_norm([dim], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// `weight * (x / sqrt(mean(x^2) + eps))` as HF's `LlamaRMSNorm` computes
/// it: the normalisation in float32, cast back to the input's dtype before
/// the scale is applied.
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(p: Path, dim: i64, eps: f64) -> Result<RmsNorm, TchError> {
        Ok(RmsNorm {
            weight: p.f_var("weight", &[dim], Init::Const(1.0))?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let kind = x.kind();
        let x32 = x.f_to_kind(Kind::Float)?;
        let variance = x32
            .f_square()?
            .f_mean_dim([-1i64].as_slice(), true, Kind::Float)?;
        let normed = x32.f_mul(&variance.f_add_scalar(self.eps)?.f_rsqrt()?)?;
        self.weight.f_mul(&normed.f_to_kind(kind)?)
    }
}
