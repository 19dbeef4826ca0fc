//! GPT-NeoX (Pythia): HF `GPTNeoXForCausalLM` and its sequence-classification
//! twin, parameter names under `gpt_neox.`, the untied head `embed_out`.

use serde::Deserialize;
use tch::nn::Path;
use tch::{TchError, Tensor};

use super::fields::{activation, check_dimensions, check_divides, check_positive, parse};
use crate::torch::nn::{
    Activation, Embedding, Frame, KvCache, LayerNorm, Linear, LoraPlan, RopeParameters, Rotary,
    RotaryStyle, attend, cached,
};
use crate::torch::{Result, TorchError};

/// GPT-NeoX hyper-parameters, HF field names.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct GptNeoxConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    /// Share of each head's channels that are rotated. Older configs call it
    /// `rotary_pct`, transformers 5 `rope_parameters.partial_rotary_factor`;
    /// [`GptNeoxConfig::from_json`] resolves both.
    #[serde(default = "default_rotary_pct")]
    pub rotary_pct: f64,
    /// `rotary_emb_base`, or `rope_parameters.rope_theta`.
    #[serde(default = "default_rotary_base")]
    pub rotary_emb_base: f64,
    pub max_position_embeddings: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_true")]
    pub use_parallel_residual: bool,
    #[serde(default = "default_gelu")]
    pub hidden_act: String,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_true")]
    pub attention_bias: bool,
    /// Resolved from both spellings by [`GptNeoxConfig::from_json`].
    #[serde(skip)]
    pub rope: Option<RopeParameters>,
}

fn default_rotary_pct() -> f64 {
    0.25
}
fn default_rotary_base() -> f64 {
    10000.0
}
fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_gelu() -> String {
    "gelu".into()
}

const ACTIVATIONS: &[Activation] = &[Activation::Gelu, Activation::GeluTanh, Activation::Silu];

impl GptNeoxConfig {
    /// Reads and checks the config, its rope settings from either spelling.
    pub fn from_json(raw: &serde_json::Value) -> Result<GptNeoxConfig> {
        let mut c: GptNeoxConfig = parse(raw, "gpt_neox")?;
        check_positive("`rope_theta` (`rotary_emb_base`)", c.rotary_emb_base)?;
        let rope = RopeParameters::from_config(raw, c.rotary_emb_base).map_err(|e| match e {
            TorchError::Unsupported(m) => TorchError::Unsupported(format!("gpt_neox {m}")),
            other => other,
        })?;
        c.rotary_emb_base = rope.theta;
        if let Some(f) = rope.partial_rotary_factor {
            c.rotary_pct = f;
        }
        c.rope = Some(rope);
        c.check()?;
        Ok(c)
    }

    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// `r = int(head_dim * rotary_pct)`, the `dim` of HF's rotary
    /// frequencies `base^(-2i / r)`, `ceil(r / 2)` of them. HF rotates as
    /// many channels as its cos/sin tables have, `2 ceil(r / 2)`: one more
    /// than `r` when `r` is odd.
    pub fn rotary_frequency_dims(&self) -> i64 {
        (self.head_dim() as f64 * self.rotary_pct) as i64
    }

    /// Sizes positive and bounded, heads dividing the hidden size, the
    /// rotated channels within a head, a positive rotary base and norm
    /// epsilon, a known activation: every field the model's shapes depend
    /// on, each error naming its field.
    pub fn check(&self) -> Result<()> {
        check_dimensions(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ])?;
        check_divides(
            "hidden_size",
            self.hidden_size,
            "num_attention_heads",
            self.num_attention_heads,
        )?;
        if !(self.rotary_pct > 0.0 && self.rotary_pct <= 1.0) {
            return Err(TorchError::Input(format!(
                "field `rotary_pct` (`partial_rotary_factor`): {} must be in (0, 1]",
                self.rotary_pct
            )));
        }
        let r = self.rotary_frequency_dims();
        let rotated = 2 * ((r + 1) / 2);
        if rotated > self.head_dim() {
            return Err(TorchError::Input(format!(
                "field `rotary_pct`: {} of a head of {} channels gives {r} rotary dimensions, rotated in pairs as {rotated}, more than the head has",
                self.rotary_pct,
                self.head_dim()
            )));
        }
        check_positive("`rope_theta` (`rotary_emb_base`)", self.rotary_emb_base)?;
        check_positive("`layer_norm_eps`", self.layer_norm_eps)?;
        activation("gpt_neox", "hidden_act", &self.hidden_act, ACTIVATIONS)?;
        Ok(())
    }

    /// Weights of the body and an LM head (128 bits: no config overflows).
    pub fn parameter_count(&self) -> u128 {
        let n = |v: i64| v.max(0) as u128;
        let (h, f) = (n(self.hidden_size), n(self.intermediate_size));
        let layer = 4 * h * h + 2 * h * f + 9 * h + f;
        2 * n(self.vocab_size) * h + n(self.num_hidden_layers) * layer + 2 * h
    }

    fn rotary(&self) -> Rotary {
        let rope = self.rope.clone().unwrap_or(RopeParameters {
            theta: self.rotary_emb_base,
            scaling: crate::torch::nn::RopeScaling::None,
            partial_rotary_factor: None,
        });
        Rotary::new(
            rope.frequencies(self.rotary_frequency_dims()),
            RotaryStyle::HalfSplit,
        )
    }
}

pub struct GptNeoxAttention {
    pub query_key_value: Linear,
    pub dense: Linear,
    heads: i64,
    head_dim: i64,
    rotary: Rotary,
}

impl GptNeoxAttention {
    fn new(p: Path, c: &GptNeoxConfig, plan: &LoraPlan) -> std::result::Result<Self, TchError> {
        Ok(GptNeoxAttention {
            query_key_value: Linear::adapted(
                &p / "query_key_value",
                c.hidden_size,
                3 * c.hidden_size,
                c.attention_bias,
                plan,
            )?,
            dense: Linear::adapted(
                &p / "dense",
                c.hidden_size,
                c.hidden_size,
                c.attention_bias,
                plan,
            )?,
            heads: c.num_attention_heads,
            head_dim: c.head_dim(),
            rotary: c.rotary(),
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        frame: &Frame,
        cache: Option<(&mut KvCache, usize)>,
    ) -> std::result::Result<Tensor, TchError> {
        let (b, t, _) = x.size3()?;
        // HF's fused layout: per head, its q, k and v channels in a row.
        let qkv = self
            .query_key_value
            .forward(x)?
            .f_view([b, t, self.heads, 3 * self.head_dim])?
            .f_transpose(1, 2)?;
        let parts = qkv.f_chunk(3, -1)?;
        let (q, k) = match &frame.rotary {
            Some(tables) => (
                self.rotary.apply(&parts[0], tables)?,
                self.rotary.apply(&parts[1], tables)?,
            ),
            None => (parts[0].shallow_clone(), parts[1].shallow_clone()),
        };
        let (k, v) = cached(cache, k, parts[2].shallow_clone())?;
        self.dense.forward(&attend(&q, &k, &v, frame)?)
    }
}

pub struct GptNeoxMlp {
    pub dense_h_to_4h: Linear,
    pub dense_4h_to_h: Linear,
    act: Activation,
}

impl GptNeoxMlp {
    fn forward(&self, x: &Tensor) -> std::result::Result<Tensor, TchError> {
        self.dense_4h_to_h
            .forward(&self.act.apply(&self.dense_h_to_4h.forward(x)?)?)
    }
}

pub struct GptNeoxLayer {
    pub input_layernorm: LayerNorm,
    pub post_attention_layernorm: LayerNorm,
    pub attention: GptNeoxAttention,
    pub mlp: GptNeoxMlp,
    parallel_residual: bool,
}

impl GptNeoxLayer {
    fn forward(
        &self,
        x: &Tensor,
        frame: &Frame,
        cache: Option<(&mut KvCache, usize)>,
    ) -> std::result::Result<Tensor, TchError> {
        let attn = self
            .attention
            .forward(&self.input_layernorm.forward(x)?, frame, cache)?;
        if self.parallel_residual {
            let m = self
                .mlp
                .forward(&self.post_attention_layernorm.forward(x)?)?;
            x.f_add(&attn)?.f_add(&m)
        } else {
            let h = x.f_add(&attn)?;
            let m = self
                .mlp
                .forward(&self.post_attention_layernorm.forward(&h)?)?;
            h.f_add(&m)
        }
    }
}

/// The transformer body (`GPTNeoXModel`): embeddings, layers, final norm.
pub struct GptNeoxModel {
    pub embed_in: Embedding,
    pub layers: Vec<GptNeoxLayer>,
    pub final_layer_norm: LayerNorm,
}

impl GptNeoxModel {
    /// `p` is the model's root; the body lives under `gpt_neox`.
    pub fn new(
        p: Path,
        c: &GptNeoxConfig,
        plan: &LoraPlan,
    ) -> std::result::Result<GptNeoxModel, TchError> {
        let p = &p / "gpt_neox";
        let act = Activation::from_hf(&c.hidden_act).unwrap_or(Activation::Gelu);
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let lp = &p / "layers" / i;
                let norm = |name: &str| LayerNorm::new(&lp / name, c.hidden_size, c.layer_norm_eps);
                Ok(GptNeoxLayer {
                    input_layernorm: norm("input_layernorm")?,
                    post_attention_layernorm: norm("post_attention_layernorm")?,
                    attention: GptNeoxAttention::new(&lp / "attention", c, plan)?,
                    mlp: GptNeoxMlp {
                        dense_h_to_4h: Linear::adapted(
                            &lp / "mlp" / "dense_h_to_4h",
                            c.hidden_size,
                            c.intermediate_size,
                            true,
                            plan,
                        )?,
                        dense_4h_to_h: Linear::adapted(
                            &lp / "mlp" / "dense_4h_to_h",
                            c.intermediate_size,
                            c.hidden_size,
                            true,
                            plan,
                        )?,
                        act,
                    },
                    parallel_residual: c.use_parallel_residual,
                })
            })
            .collect::<std::result::Result<_, TchError>>()?;
        Ok(GptNeoxModel {
            embed_in: Embedding::new(&p / "embed_in", c.vocab_size, c.hidden_size)?,
            layers,
            final_layer_norm: LayerNorm::new(
                &p / "final_layer_norm",
                c.hidden_size,
                c.layer_norm_eps,
            )?,
        })
    }

    /// The token embeddings and the pass's frame.
    pub fn embed(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_valid: &Tensor,
    ) -> Result<(Tensor, Frame)> {
        let x = self.embed_in.forward(ids)?;
        let rotary = match self.layers.first() {
            Some(l) => Some(l.attention.rotary.tables(positions, x.kind())?),
            None => None,
        };
        let frame = Frame::new(key_valid, ids.size2()?.1, None, rotary)?;
        Ok((x, frame))
    }

    /// Layer `i` of the pass.
    pub fn layer(
        &self,
        i: usize,
        x: &Tensor,
        frame: &Frame,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        Ok(self.layers[i].forward(x, frame, cache)?)
    }

    /// The final norm.
    pub fn finish(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.final_layer_norm.forward(x)?)
    }
}
