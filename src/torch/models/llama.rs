//! Llama (`LlamaForCausalLM`, `LlamaForSequenceClassification`), parameter
//! names under `model.`, and the decoder that Mistral, Qwen2 and Qwen3
//! share with it: RMSNorm, grouped-query attention over `head_dim`
//! channels with half-split rotary embeddings on the whole head, and a
//! gated MLP. The families differ only in [`DecoderShape`]'s switches,
//! which each family's config sets.

use serde::Deserialize;
use tch::nn::Path;
use tch::{TchError, Tensor};

use super::fields::{activation, check_dimensions, check_divides, check_positive, parse};
use crate::torch::nn::{
    Activation, Embedding, Frame, GatedMlp, KvCache, Linear, LoraPlan, RmsNorm, RopeParameters,
    Rotary, RotaryStyle, attend, cached,
};
use crate::torch::{Result, TorchError};

/// The config fields every Llama-shaped family has, HF names; the families
/// differ in their defaults, which they fill in.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct DecoderFields {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    /// Absent: one KV head per query head (multi-head attention).
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    /// Absent: `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default)]
    pub rms_norm_eps: Option<f64>,
    #[serde(default)]
    pub max_position_embeddings: Option<i64>,
    #[serde(default = "default_silu")]
    pub hidden_act: String,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
}

fn default_silu() -> String {
    "silu".into()
}

/// Llama's own switches.
#[derive(Clone, Debug, Deserialize, PartialEq)]
struct LlamaSwitches {
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
}

/// Everything the decoder's shapes and arithmetic depend on, resolved from
/// one family's config.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderShape {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: i64,
    pub rope: RopeParameters,
    pub act: Activation,
    /// Biases on q, k and v (Llama's `attention_bias`; always for Qwen2).
    pub qkv_bias: bool,
    /// A bias on o (Llama's and Qwen3's `attention_bias`; never for Qwen2).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Qwen3's per-head RMSNorm on queries and keys before the rotation.
    pub qk_norm: bool,
    /// Mistral's `sliding_window`: a query sees this many keys, itself
    /// included.
    pub sliding_window: Option<i64>,
    pub tie_word_embeddings: bool,
}

/// The defaults a family gives the fields its config may leave out.
pub struct Defaults {
    pub rms_norm_eps: f64,
    pub max_position_embeddings: i64,
    pub head_dim: Option<i64>,
    pub tie_word_embeddings: bool,
    pub rope_theta: f64,
}

impl DecoderShape {
    /// The shape from the common fields of `raw` and `defaults`, biases,
    /// norms and window off; the family sets its own switches after.
    pub fn common(
        raw: &serde_json::Value,
        family: &str,
        defaults: Defaults,
    ) -> Result<DecoderShape> {
        let f: DecoderFields = parse(raw, family)?;
        check_dimensions(&[
            ("vocab_size", f.vocab_size),
            ("hidden_size", f.hidden_size),
            ("intermediate_size", f.intermediate_size),
            ("num_hidden_layers", f.num_hidden_layers),
            ("num_attention_heads", f.num_attention_heads),
        ])?;
        let kv_heads = f.num_key_value_heads.unwrap_or(f.num_attention_heads);
        check_dimensions(&[("num_key_value_heads", kv_heads)])?;
        check_divides(
            "num_attention_heads",
            f.num_attention_heads,
            "num_key_value_heads",
            kv_heads,
        )?;
        let head_dim = match f.head_dim.or(defaults.head_dim) {
            Some(d) => {
                check_dimensions(&[("head_dim", d)])?;
                d
            }
            None => {
                check_divides(
                    "hidden_size",
                    f.hidden_size,
                    "num_attention_heads",
                    f.num_attention_heads,
                )?;
                f.hidden_size / f.num_attention_heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(TorchError::Input(format!(
                "field `head_dim`: {head_dim} channels per head cannot be rotated in pairs (rotary embeddings need an even head size)"
            )));
        }
        check_dimensions(&[(
            "num_attention_heads * head_dim",
            f.num_attention_heads * head_dim,
        )])?;
        let max_positions = f
            .max_position_embeddings
            .unwrap_or(defaults.max_position_embeddings);
        check_dimensions(&[("max_position_embeddings", max_positions)])?;
        let eps = f.rms_norm_eps.unwrap_or(defaults.rms_norm_eps);
        check_positive("`rms_norm_eps`", eps)?;
        let rope = RopeParameters::from_config(raw, defaults.rope_theta).map_err(|e| match e {
            TorchError::Unsupported(m) => TorchError::Unsupported(format!("{family} {m}")),
            other => other,
        })?;
        if let Some(p) = rope.partial_rotary_factor.filter(|&p| p != 1.0) {
            return Err(TorchError::Unsupported(format!(
                "{family} partial_rotary_factor {p} ({family} rotates whole heads)"
            )));
        }
        let act = activation(
            family,
            "hidden_act",
            &f.hidden_act,
            &[Activation::Silu, Activation::Gelu, Activation::GeluTanh],
        )?;
        Ok(DecoderShape {
            vocab_size: f.vocab_size,
            hidden_size: f.hidden_size,
            intermediate_size: f.intermediate_size,
            num_hidden_layers: f.num_hidden_layers,
            num_attention_heads: f.num_attention_heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: eps,
            max_position_embeddings: max_positions,
            rope,
            act,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            sliding_window: None,
            tie_word_embeddings: f
                .tie_word_embeddings
                .unwrap_or(defaults.tie_word_embeddings),
        })
    }

    /// A Llama config: `attention_bias` puts biases on q, k, v and o,
    /// `mlp_bias` on the MLP.
    pub fn llama(raw: &serde_json::Value) -> Result<DecoderShape> {
        let mut shape = DecoderShape::common(
            raw,
            "llama",
            Defaults {
                rms_norm_eps: 1e-6,
                max_position_embeddings: 2048,
                head_dim: None,
                tie_word_embeddings: false,
                rope_theta: 10000.0,
            },
        )?;
        let s: LlamaSwitches = parse(raw, "llama")?;
        shape.qkv_bias = s.attention_bias;
        shape.o_bias = s.attention_bias;
        shape.mlp_bias = s.mlp_bias;
        Ok(shape)
    }

    /// Weights of the body and an LM head (128 bits: no config overflows).
    pub fn parameter_count(&self) -> u128 {
        let n = |v: i64| v.max(0) as u128;
        let (h, f) = (n(self.hidden_size), n(self.intermediate_size));
        let (q, kv) = (
            n(self.num_attention_heads) * n(self.head_dim),
            n(self.num_key_value_heads) * n(self.head_dim),
        );
        let layer = 2 * h * q + 2 * h * kv + 3 * h * f + 2 * h + 2 * q + 2 * kv + 2 * f;
        2 * n(self.vocab_size) * h + n(self.num_hidden_layers) * layer + h
    }
}

pub struct LlamaAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl LlamaAttention {
    fn new(p: Path, s: &DecoderShape, plan: &LoraPlan) -> std::result::Result<Self, TchError> {
        let (h, d) = (s.hidden_size, s.head_dim);
        let norm = |name: &str| {
            s.qk_norm
                .then(|| RmsNorm::new(&p / name, d, s.rms_norm_eps))
                .transpose()
        };
        Ok(LlamaAttention {
            q_proj: Linear::adapted(
                &p / "q_proj",
                h,
                s.num_attention_heads * d,
                s.qkv_bias,
                plan,
            )?,
            k_proj: Linear::adapted(
                &p / "k_proj",
                h,
                s.num_key_value_heads * d,
                s.qkv_bias,
                plan,
            )?,
            v_proj: Linear::adapted(
                &p / "v_proj",
                h,
                s.num_key_value_heads * d,
                s.qkv_bias,
                plan,
            )?,
            o_proj: Linear::adapted(&p / "o_proj", s.num_attention_heads * d, h, s.o_bias, plan)?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
            heads: s.num_attention_heads,
            kv_heads: s.num_key_value_heads,
            head_dim: d,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        frame: &Frame,
        rotary: &Rotary,
        cache: Option<(&mut KvCache, usize)>,
    ) -> std::result::Result<Tensor, TchError> {
        let (b, t, _) = x.size3()?;
        // [b, t, heads, d], normed per head (Qwen3), then [b, heads, t, d].
        let heads = |proj: &Linear, n: i64, norm: &Option<RmsNorm>| {
            let y = proj.forward(x)?.f_view([b, t, n, self.head_dim])?;
            match norm {
                Some(norm) => norm.forward(&y)?.f_transpose(1, 2),
                None => y.f_transpose(1, 2),
            }
        };
        let mut q = heads(&self.q_proj, self.heads, &self.q_norm)?;
        let mut k = heads(&self.k_proj, self.kv_heads, &self.k_norm)?;
        let v = heads(&self.v_proj, self.kv_heads, &None)?;
        if let Some(tables) = &frame.rotary {
            q = rotary.apply(&q, tables)?;
            k = rotary.apply(&k, tables)?;
        }
        let (k, v) = cached(cache, k, v)?;
        self.o_proj.forward(&attend(&q, &k, &v, frame)?)
    }
}

pub struct LlamaLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: LlamaAttention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: GatedMlp,
}

impl LlamaLayer {
    fn forward(
        &self,
        x: &Tensor,
        frame: &Frame,
        rotary: &Rotary,
        cache: Option<(&mut KvCache, usize)>,
    ) -> std::result::Result<Tensor, TchError> {
        let attn =
            self.self_attn
                .forward(&self.input_layernorm.forward(x)?, frame, rotary, cache)?;
        let h = x.f_add(&attn)?;
        let m = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&h)?)?;
        h.f_add(&m)
    }
}

/// The decoder body (`LlamaModel`, `MistralModel`, `Qwen2Model`,
/// `Qwen3Model`): embeddings, layers, final norm.
pub struct LlamaModel {
    pub embed_tokens: Embedding,
    pub layers: Vec<LlamaLayer>,
    pub norm: RmsNorm,
    rotary: Rotary,
    sliding_window: Option<i64>,
}

impl LlamaModel {
    /// `p` is the model's root; the body lives under `model`.
    pub fn new(
        p: Path,
        s: &DecoderShape,
        plan: &LoraPlan,
    ) -> std::result::Result<LlamaModel, TchError> {
        let p = &p / "model";
        let layers = (0..s.num_hidden_layers)
            .map(|i| {
                let lp = &p / "layers" / i;
                Ok(LlamaLayer {
                    input_layernorm: RmsNorm::new(
                        &lp / "input_layernorm",
                        s.hidden_size,
                        s.rms_norm_eps,
                    )?,
                    self_attn: LlamaAttention::new(&lp / "self_attn", s, plan)?,
                    post_attention_layernorm: RmsNorm::new(
                        &lp / "post_attention_layernorm",
                        s.hidden_size,
                        s.rms_norm_eps,
                    )?,
                    mlp: GatedMlp::new(
                        &lp / "mlp",
                        s.hidden_size,
                        s.intermediate_size,
                        s.mlp_bias,
                        s.act,
                        plan,
                    )?,
                })
            })
            .collect::<std::result::Result<_, TchError>>()?;
        Ok(LlamaModel {
            embed_tokens: Embedding::new(&p / "embed_tokens", s.vocab_size, s.hidden_size)?,
            layers,
            norm: RmsNorm::new(&p / "norm", s.hidden_size, s.rms_norm_eps)?,
            rotary: Rotary::new(s.rope.frequencies(s.head_dim), RotaryStyle::HalfSplit),
            sliding_window: s.sliding_window,
        })
    }

    /// The token embeddings and the pass's frame.
    pub fn embed(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_valid: &Tensor,
    ) -> Result<(Tensor, Frame)> {
        let x = self.embed_tokens.forward(ids)?;
        let tables = self.rotary.tables(positions, x.kind())?;
        let frame = Frame::new(key_valid, ids.size2()?.1, self.sliding_window, Some(tables))?;
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
        Ok(self.layers[i].forward(x, frame, &self.rotary, cache)?)
    }

    /// The final norm.
    pub fn finish(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.norm.forward(x)?)
    }
}
