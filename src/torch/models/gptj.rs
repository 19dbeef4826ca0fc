//! GPT-J (`GPTJForCausalLM`, `GPTJForSequenceClassification`), the paper's
//! TL;DR policy and reward model: parameter names under `transformer.`,
//! attention and MLP in parallel on one `ln_1`, q/k/v/out without bias,
//! interleaved (rotate-every-two) rotary embeddings over the first
//! `rotary_dim` channels of each head with base 10000, and an `lm_head`
//! with a bias.

use serde::Deserialize;
use tch::nn::Path;
use tch::{TchError, Tensor};

use super::fields::{activation, check_dimensions, check_divides, check_positive, parse};
use crate::torch::nn::{
    Activation, Embedding, Frame, KvCache, LayerNorm, Linear, LoraPlan, RopeParameters,
    RopeScaling, Rotary, RotaryStyle, attend, cached,
};
use crate::torch::{Result, TorchError};

/// GPT-J hyper-parameters, HF field names.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct GptJConfig {
    pub vocab_size: i64,
    pub n_embd: i64,
    pub n_layer: i64,
    pub n_head: i64,
    pub n_positions: i64,
    /// Rotated channels per head; absent: all of them.
    #[serde(default)]
    pub rotary_dim: Option<i64>,
    #[serde(default)]
    pub n_inner: Option<i64>,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_gelu_new")]
    pub activation_function: String,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_gelu_new() -> String {
    "gelu_new".into()
}

/// GPT-J's rotary base, fixed in transformers' `create_sinusoidal_positions`.
const ROTARY_BASE: f64 = 10000.0;

impl GptJConfig {
    pub fn from_json(raw: &serde_json::Value) -> Result<GptJConfig> {
        let c: GptJConfig = parse(raw, "gptj")?;
        c.check()?;
        Ok(c)
    }

    pub fn head_dim(&self) -> i64 {
        self.n_embd / self.n_head
    }

    pub fn rotated(&self) -> i64 {
        self.rotary_dim.unwrap_or(self.head_dim())
    }

    pub fn check(&self) -> Result<()> {
        check_dimensions(&[
            ("vocab_size", self.vocab_size),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_positions", self.n_positions),
        ])?;
        if let Some(inner) = self.n_inner {
            check_dimensions(&[("n_inner", inner)])?;
        }
        check_divides("n_embd", self.n_embd, "n_head", self.n_head)?;
        let r = self.rotated();
        if !(1..=self.head_dim()).contains(&r) || r % 2 != 0 {
            return Err(TorchError::Input(format!(
                "field `rotary_dim`: {r} must be even and within a head's {} channels",
                self.head_dim()
            )));
        }
        check_positive("`layer_norm_epsilon`", self.layer_norm_epsilon)?;
        activation(
            "gptj",
            "activation_function",
            &self.activation_function,
            &[Activation::GeluTanh, Activation::Gelu, Activation::Silu],
        )?;
        Ok(())
    }

    fn inner(&self) -> i64 {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    pub fn parameter_count(&self) -> u128 {
        let n = |v: i64| v.max(0) as u128;
        let (h, f) = (n(self.n_embd), n(self.inner()));
        let layer = 4 * h * h + 2 * h * f + 2 * h + f + h;
        2 * n(self.vocab_size) * h + n(self.vocab_size) + n(self.n_layer) * layer + 2 * h
    }
}

pub struct GptJAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    heads: i64,
    head_dim: i64,
}

impl GptJAttention {
    fn forward(
        &self,
        x: &Tensor,
        frame: &Frame,
        rotary: &Rotary,
        cache: Option<(&mut KvCache, usize)>,
    ) -> std::result::Result<Tensor, TchError> {
        let (b, t, _) = x.size3()?;
        let heads = |proj: &Linear| {
            proj.forward(x)?
                .f_view([b, t, self.heads, self.head_dim])?
                .f_transpose(1, 2)
        };
        let (mut q, mut k, v) = (
            heads(&self.q_proj)?,
            heads(&self.k_proj)?,
            heads(&self.v_proj)?,
        );
        if let Some(tables) = &frame.rotary {
            q = rotary.apply(&q, tables)?;
            k = rotary.apply(&k, tables)?;
        }
        let (k, v) = cached(cache, k, v)?;
        self.out_proj.forward(&attend(&q, &k, &v, frame)?)
    }
}

pub struct GptJBlock {
    pub ln_1: LayerNorm,
    pub attn: GptJAttention,
    pub fc_in: Linear,
    pub fc_out: Linear,
    act: Activation,
}

impl GptJBlock {
    /// `x + attn(ln_1(x)) + mlp(ln_1(x))`.
    fn forward(
        &self,
        x: &Tensor,
        frame: &Frame,
        rotary: &Rotary,
        cache: Option<(&mut KvCache, usize)>,
    ) -> std::result::Result<Tensor, TchError> {
        let h = self.ln_1.forward(x)?;
        let attn = self.attn.forward(&h, frame, rotary, cache)?;
        let mlp = self
            .fc_out
            .forward(&self.act.apply(&self.fc_in.forward(&h)?)?)?;
        attn.f_add(&mlp)?.f_add(x)
    }
}

/// The transformer body (`GPTJModel`).
pub struct GptJModel {
    pub wte: Embedding,
    pub h: Vec<GptJBlock>,
    pub ln_f: LayerNorm,
    rotary: Rotary,
}

impl GptJModel {
    /// `p` is the model's root; the body lives under `transformer`.
    pub fn new(
        p: Path,
        c: &GptJConfig,
        plan: &LoraPlan,
    ) -> std::result::Result<GptJModel, TchError> {
        let p = &p / "transformer";
        let (h, inner) = (c.n_embd, c.inner());
        let act = Activation::from_hf(&c.activation_function).unwrap_or(Activation::GeluTanh);
        let blocks = (0..c.n_layer)
            .map(|i| {
                let bp = &p / "h" / i;
                let ap = &bp / "attn";
                Ok(GptJBlock {
                    ln_1: LayerNorm::new(&bp / "ln_1", h, c.layer_norm_epsilon)?,
                    attn: GptJAttention {
                        q_proj: Linear::adapted(&ap / "q_proj", h, h, false, plan)?,
                        k_proj: Linear::adapted(&ap / "k_proj", h, h, false, plan)?,
                        v_proj: Linear::adapted(&ap / "v_proj", h, h, false, plan)?,
                        out_proj: Linear::adapted(&ap / "out_proj", h, h, false, plan)?,
                        heads: c.n_head,
                        head_dim: c.head_dim(),
                    },
                    fc_in: Linear::adapted(&bp / "mlp" / "fc_in", h, inner, true, plan)?,
                    fc_out: Linear::adapted(&bp / "mlp" / "fc_out", inner, h, true, plan)?,
                    act,
                })
            })
            .collect::<std::result::Result<_, TchError>>()?;
        let rope = RopeParameters {
            theta: ROTARY_BASE,
            scaling: RopeScaling::None,
            partial_rotary_factor: None,
        };
        Ok(GptJModel {
            wte: Embedding::new(&p / "wte", c.vocab_size, h)?,
            h: blocks,
            ln_f: LayerNorm::new(&p / "ln_f", h, c.layer_norm_epsilon)?,
            rotary: Rotary::new(rope.frequencies(c.rotated()), RotaryStyle::Interleaved),
        })
    }

    /// The token embeddings and the pass's frame.
    pub fn embed(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_valid: &Tensor,
    ) -> Result<(Tensor, Frame)> {
        let x = self.wte.forward(ids)?;
        let tables = self.rotary.tables(positions, x.kind())?;
        let frame = Frame::new(key_valid, ids.size2()?.1, None, Some(tables))?;
        Ok((x, frame))
    }

    /// Block `i` of the pass.
    pub fn layer(
        &self,
        i: usize,
        x: &Tensor,
        frame: &Frame,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        Ok(self.h[i].forward(x, frame, &self.rotary, cache)?)
    }

    /// The final norm.
    pub fn finish(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.ln_f.forward(x)?)
    }
}
