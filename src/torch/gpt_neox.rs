//! GPT-NeoX (Pythia), HF parameter names under `gpt_neox.`.

use tch::nn::Path;
use tch::{Kind, TchError, Tensor};

use super::config::GptNeoxConfig;
use super::kv_cache::KvCache;
use super::layers::{Embedding, LayerNorm, Linear, attend, attention_mask};

pub struct GptNeoxAttention {
    pub query_key_value: Linear,
    pub dense: Linear,
    heads: i64,
    head_dim: i64,
    rotary_dims: i64,
    /// `1 / base^(2i / r)`, float32, HF's `inv_freq`.
    inv_freq: Vec<f32>,
}

impl GptNeoxAttention {
    fn new(p: Path, c: &GptNeoxConfig) -> Result<Self, TchError> {
        let head_dim = c.head_dim();
        let r = c.rotary_frequency_dims();
        // As HF: base ** (arange(0, r, 2).float() / r) in float32, ceil(r / 2)
        // frequencies, and as many channels rotated as the cos/sin tables
        // have (r + 1 for an odd r; config.rs checks that they fit).
        let inv_freq: Vec<f32> = (0..r)
            .step_by(2)
            .map(|i| 1.0 / (c.rotary_emb_base as f32).powf(i as f32 / r as f32))
            .collect();
        Ok(GptNeoxAttention {
            query_key_value: Linear::new(
                &p / "query_key_value",
                c.hidden_size,
                3 * c.hidden_size,
                c.attention_bias,
            )?,
            dense: Linear::new(&p / "dense", c.hidden_size, c.hidden_size, c.attention_bias)?,
            heads: c.num_attention_heads,
            head_dim,
            rotary_dims: 2 * inv_freq.len() as i64,
            inv_freq,
        })
    }

    /// `(cos, sin)` tables `[b, 1, t, r]` of the positions `[b, t]` for the
    /// first `r = rotary_dims` channels (HF's non-interleaved convention),
    /// computed once per forward pass and shared by every layer.
    fn rotary_tables(&self, positions: &Tensor, kind: Kind) -> Option<(Tensor, Tensor)> {
        let r = self.rotary_dims;
        if r == 0 {
            return None;
        }
        let inv_freq = Tensor::from_slice(&self.inv_freq).to_device(positions.device());
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq.view([1, 1, -1]); // [b, t, r/2]
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1); // [b, 1, t, r]
        Some((emb.cos().to_kind(kind), emb.sin().to_kind(kind)))
    }

    /// Rotates the first `rotary_dims` channels of `[b, h, t, d]`.
    fn rotate(&self, x: &Tensor, tables: &Option<(Tensor, Tensor)>) -> Tensor {
        let Some((cos, sin)) = tables else {
            return x.shallow_clone();
        };
        let r = self.rotary_dims;
        let x_rot = x.narrow(-1, 0, r);
        let x_pass = x.narrow(-1, r, self.head_dim - r);
        let half = x_rot.chunk(2, -1);
        let rotated = Tensor::cat(&[-&half[1], half[0].shallow_clone()], -1);
        Tensor::cat(&[&x_rot * cos + rotated * sin, x_pass], -1)
    }

    fn forward(&self, x: &Tensor, frame: &Frame, cache: Option<(&mut KvCache, usize)>) -> Tensor {
        let (b, t, h) = x.size3().expect("hidden states are [b, t, h]");
        let qkv = self
            .query_key_value
            .forward(x)
            .view([b, t, self.heads, 3 * self.head_dim])
            .transpose(1, 2);
        let parts = qkv.chunk(3, -1);
        let q = self.rotate(&parts[0], &frame.rotary);
        let k = self.rotate(&parts[1], &frame.rotary);
        let v = parts[2].shallow_clone();
        let (k, v) = match cache {
            Some((c, layer)) => c.append(layer, k, v),
            None => (k, v),
        };
        let out = attend(&q, &k, &v, &frame.mask);
        self.dense
            .forward(&out.transpose(1, 2).contiguous().view([b, t, h]))
    }
}

/// What every layer of one forward pass shares: the attention mask and the
/// rotary tables.
struct Frame {
    mask: Tensor,
    rotary: Option<(Tensor, Tensor)>,
}

pub struct GptNeoxMlp {
    pub dense_h_to_4h: Linear,
    pub dense_4h_to_h: Linear,
}

impl GptNeoxMlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.dense_4h_to_h
            .forward(&self.dense_h_to_4h.forward(x).gelu("none"))
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
    fn forward(&self, x: &Tensor, frame: &Frame, cache: Option<(&mut KvCache, usize)>) -> Tensor {
        let attn = self
            .attention
            .forward(&self.input_layernorm.forward(x), frame, cache);
        if self.parallel_residual {
            x + attn + self.mlp.forward(&self.post_attention_layernorm.forward(x))
        } else {
            let h = x + attn;
            let m = self.mlp.forward(&self.post_attention_layernorm.forward(&h));
            h + m
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
    /// `p` is the `gpt_neox` path.
    pub fn new(p: Path, c: &GptNeoxConfig) -> Result<GptNeoxModel, TchError> {
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let lp = &p / "layers" / i;
                Ok(GptNeoxLayer {
                    input_layernorm: LayerNorm::new(
                        &lp / "input_layernorm",
                        c.hidden_size,
                        c.layer_norm_eps,
                    )?,
                    post_attention_layernorm: LayerNorm::new(
                        &lp / "post_attention_layernorm",
                        c.hidden_size,
                        c.layer_norm_eps,
                    )?,
                    attention: GptNeoxAttention::new(&lp / "attention", c)?,
                    mlp: GptNeoxMlp {
                        dense_h_to_4h: Linear::new(
                            &lp / "mlp" / "dense_h_to_4h",
                            c.hidden_size,
                            c.intermediate_size,
                            true,
                        )?,
                        dense_4h_to_h: Linear::new(
                            &lp / "mlp" / "dense_4h_to_h",
                            c.intermediate_size,
                            c.hidden_size,
                            true,
                        )?,
                    },
                    parallel_residual: c.use_parallel_residual,
                })
            })
            .collect::<Result<_, TchError>>()?;
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

    pub fn forward(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_valid: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor {
        let mut x = self.embed_in.forward(ids);
        let frame = Frame {
            mask: attention_mask(key_valid, ids.size()[1]),
            rotary: self
                .layers
                .first()
                .and_then(|l| l.attention.rotary_tables(positions, x.kind())),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &frame, cache.as_deref_mut().map(|c| (c, i)));
        }
        self.final_layer_norm.forward(&x)
    }
}
