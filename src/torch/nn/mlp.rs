//! Activations and the gated MLP of the Llama family.

use tch::nn::Path;
use tch::{TchError, Tensor};

use super::linear::Linear;
use super::lora::LoraPlan;

/// The activations HF configs name (`hidden_act`, `activation_function`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact, erf-based GELU.
    Gelu,
    /// `gelu_new` (and `gelu_pytorch_tanh`): the tanh approximation.
    GeluTanh,
    /// `silu` (`swish`): `x * sigmoid(x)`.
    Silu,
}

impl Activation {
    /// The activation an HF config names, if p3o has it.
    pub fn from_hf(name: &str) -> Option<Activation> {
        match name {
            "gelu" => Some(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Some(Activation::GeluTanh),
            "silu" | "swish" => Some(Activation::Silu),
            _ => None,
        }
    }

    /// The name HF configs give it.
    pub fn hf_name(self) -> &'static str {
        match self {
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_new",
            Activation::Silu => "silu",
        }
    }

    pub fn apply(self, x: &Tensor) -> Result<Tensor, TchError> {
        match self {
            Activation::Gelu => x.f_gelu("none"),
            Activation::GeluTanh => x.f_gelu("tanh"),
            Activation::Silu => x.f_silu(),
        }
    }
}

/// `down(act(gate(x)) * up(x))` (SwiGLU with `silu`), HF names
/// `gate_proj`, `up_proj`, `down_proj`.
pub struct GatedMlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    pub act: Activation,
}

impl GatedMlp {
    pub fn new(
        p: Path,
        hidden: i64,
        intermediate: i64,
        bias: bool,
        act: Activation,
        plan: &LoraPlan,
    ) -> Result<GatedMlp, TchError> {
        Ok(GatedMlp {
            gate_proj: Linear::adapted(&p / "gate_proj", hidden, intermediate, bias, plan)?,
            up_proj: Linear::adapted(&p / "up_proj", hidden, intermediate, bias, plan)?,
            down_proj: Linear::adapted(&p / "down_proj", intermediate, hidden, bias, plan)?,
            act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let gate = self.act.apply(&self.gate_proj.forward(x)?)?;
        self.down_proj
            .forward(&gate.f_mul(&self.up_proj.forward(x)?)?)
    }
}
