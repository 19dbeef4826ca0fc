//! GPT-2: HF `GPT2LMHeadModel` and its sequence-classification twin,
//! parameter names under `transformer.`; the LM head is tied to the token
//! embedding.

use serde::Deserialize;
use tch::nn::Path;
use tch::{TchError, Tensor};

use super::fields::{activation, check_dimensions, check_divides, check_positive, parse};
use crate::torch::Result;
use crate::torch::nn::{
    Activation, Conv1D, Embedding, Frame, KvCache, LayerNorm, LoraPlan, attend, cached,
};

/// GPT-2 hyper-parameters, HF field names.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Gpt2Config {
    pub vocab_size: i64,
    pub n_embd: i64,
    pub n_layer: i64,
    pub n_head: i64,
    pub n_positions: i64,
    #[serde(default)]
    pub n_inner: Option<i64>,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_gelu_new")]
    pub activation_function: String,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_gelu_new() -> String {
    "gelu_new".into()
}

const ACTIVATIONS: &[Activation] = &[Activation::GeluTanh, Activation::Gelu];

impl Gpt2Config {
    pub fn from_json(raw: &serde_json::Value) -> Result<Gpt2Config> {
        let c: Gpt2Config = parse(raw, "gpt2")?;
        c.check()?;
        Ok(c)
    }

    /// As [`super::gpt_neox::GptNeoxConfig::check`], for GPT-2's fields.
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
        check_positive("`layer_norm_epsilon`", self.layer_norm_epsilon)?;
        activation(
            "gpt2",
            "activation_function",
            &self.activation_function,
            ACTIVATIONS,
        )?;
        Ok(())
    }

    fn inner(&self) -> i64 {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    pub fn parameter_count(&self) -> u128 {
        let n = |v: i64| v.max(0) as u128;
        let h = n(self.n_embd);
        let f = self.n_inner.map_or(4 * h, n);
        let layer = 4 * h * h + 2 * h * f + 9 * h + f;
        2 * n(self.vocab_size) * h + n(self.n_positions) * h + n(self.n_layer) * layer + 2 * h
    }
}

pub struct Gpt2Attention {
    pub c_attn: Conv1D,
    pub c_proj: Conv1D,
    heads: i64,
}

impl Gpt2Attention {
    fn forward(
        &self,
        x: &Tensor,
        frame: &Frame,
        cache: Option<(&mut KvCache, usize)>,
    ) -> std::result::Result<Tensor, TchError> {
        let (b, t, h) = x.size3()?;
        let d = h / self.heads;
        let qkv = self.c_attn.forward(x)?.f_split(h, -1)?;
        let heads = |x: &Tensor| x.f_view([b, t, self.heads, d])?.f_transpose(1, 2);
        let (q, k, v) = (heads(&qkv[0])?, heads(&qkv[1])?, heads(&qkv[2])?);
        let (k, v) = cached(cache, k, v)?;
        self.c_proj.forward(&attend(&q, &k, &v, frame)?)
    }
}

pub struct Gpt2Mlp {
    pub c_fc: Conv1D,
    pub c_proj: Conv1D,
    act: Activation,
}

pub struct Gpt2Block {
    pub ln_1: LayerNorm,
    pub attn: Gpt2Attention,
    pub ln_2: LayerNorm,
    pub mlp: Gpt2Mlp,
}

impl Gpt2Block {
    fn forward(
        &self,
        x: &Tensor,
        frame: &Frame,
        cache: Option<(&mut KvCache, usize)>,
    ) -> std::result::Result<Tensor, TchError> {
        let h = x.f_add(&self.attn.forward(&self.ln_1.forward(x)?, frame, cache)?)?;
        let inner = self.mlp.c_fc.forward(&self.ln_2.forward(&h)?)?;
        let m = self.mlp.c_proj.forward(&self.mlp.act.apply(&inner)?)?;
        h.f_add(&m)
    }
}

/// The transformer body (`GPT2Model`).
pub struct Gpt2Model {
    pub wte: Embedding,
    pub wpe: Embedding,
    pub h: Vec<Gpt2Block>,
    pub ln_f: LayerNorm,
}

impl Gpt2Model {
    /// `p` is the model's root; the body lives under `transformer`.
    pub fn new(
        p: Path,
        c: &Gpt2Config,
        plan: &LoraPlan,
    ) -> std::result::Result<Gpt2Model, TchError> {
        let p = &p / "transformer";
        let inner = c.inner();
        let act = Activation::from_hf(&c.activation_function).unwrap_or(Activation::GeluTanh);
        let h = (0..c.n_layer)
            .map(|i| {
                let bp = &p / "h" / i;
                Ok(Gpt2Block {
                    ln_1: LayerNorm::new(&bp / "ln_1", c.n_embd, c.layer_norm_epsilon)?,
                    attn: Gpt2Attention {
                        c_attn: Conv1D::adapted(
                            &bp / "attn" / "c_attn",
                            c.n_embd,
                            3 * c.n_embd,
                            plan,
                        )?,
                        c_proj: Conv1D::adapted(&bp / "attn" / "c_proj", c.n_embd, c.n_embd, plan)?,
                        heads: c.n_head,
                    },
                    ln_2: LayerNorm::new(&bp / "ln_2", c.n_embd, c.layer_norm_epsilon)?,
                    mlp: Gpt2Mlp {
                        c_fc: Conv1D::adapted(&bp / "mlp" / "c_fc", c.n_embd, inner, plan)?,
                        c_proj: Conv1D::adapted(&bp / "mlp" / "c_proj", inner, c.n_embd, plan)?,
                        act,
                    },
                })
            })
            .collect::<std::result::Result<_, TchError>>()?;
        Ok(Gpt2Model {
            wte: Embedding::new(&p / "wte", c.vocab_size, c.n_embd)?,
            wpe: Embedding::new(&p / "wpe", c.n_positions, c.n_embd)?,
            h,
            ln_f: LayerNorm::new(&p / "ln_f", c.n_embd, c.layer_norm_epsilon)?,
        })
    }

    /// The token and position embeddings and the pass's frame.
    pub fn embed(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_valid: &Tensor,
    ) -> Result<(Tensor, Frame)> {
        let x = self
            .wte
            .forward(ids)?
            .f_add(&self.wpe.forward(positions)?)?;
        let frame = Frame::new(key_valid, ids.size2()?.1, None, None)?;
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
        Ok(self.h[i].forward(x, frame, cache)?)
    }

    /// The final norm.
    pub fn finish(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.ln_f.forward(x)?)
    }
}
