//! GPT-2, HF parameter names under `transformer.`; the LM head is tied to
//! the token embedding.

use tch::nn::Path;
use tch::{TchError, Tensor};

use super::config::Gpt2Config;
use super::kv_cache::KvCache;
use super::layers::{Conv1D, Embedding, LayerNorm, attend, attention_mask};

pub struct Gpt2Attention {
    pub c_attn: Conv1D,
    pub c_proj: Conv1D,
    heads: i64,
}

impl Gpt2Attention {
    fn forward(&self, x: &Tensor, mask: &Tensor, cache: Option<(&mut KvCache, usize)>) -> Tensor {
        let (b, t, h) = x.size3().expect("hidden states are [b, t, h]");
        let d = h / self.heads;
        let qkv = self.c_attn.forward(x).split(h, -1);
        let heads = |x: &Tensor| x.view([b, t, self.heads, d]).transpose(1, 2);
        let (q, k, v) = (heads(&qkv[0]), heads(&qkv[1]), heads(&qkv[2]));
        let (k, v) = match cache {
            Some((c, layer)) => c.append(layer, k, v),
            None => (k, v),
        };
        let out = attend(&q, &k, &v, mask);
        self.c_proj
            .forward(&out.transpose(1, 2).contiguous().view([b, t, h]))
    }
}

pub struct Gpt2Mlp {
    pub c_fc: Conv1D,
    pub c_proj: Conv1D,
    approximate: &'static str,
}

pub struct Gpt2Block {
    pub ln_1: LayerNorm,
    pub attn: Gpt2Attention,
    pub ln_2: LayerNorm,
    pub mlp: Gpt2Mlp,
}

impl Gpt2Block {
    fn forward(&self, x: &Tensor, mask: &Tensor, cache: Option<(&mut KvCache, usize)>) -> Tensor {
        let h = x + self.attn.forward(&self.ln_1.forward(x), mask, cache);
        let m = self.mlp.c_proj.forward(
            &self
                .mlp
                .c_fc
                .forward(&self.ln_2.forward(&h))
                .gelu(self.mlp.approximate),
        );
        h + m
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
    /// `p` is the `transformer` path.
    pub fn new(p: Path, c: &Gpt2Config) -> Result<Gpt2Model, TchError> {
        let inner = c.n_inner.unwrap_or(4 * c.n_embd);
        let approximate = if c.activation_function == "gelu_new" {
            "tanh"
        } else {
            "none"
        };
        let h = (0..c.n_layer)
            .map(|i| {
                let bp = &p / "h" / i;
                Ok(Gpt2Block {
                    ln_1: LayerNorm::new(&bp / "ln_1", c.n_embd, c.layer_norm_epsilon)?,
                    attn: Gpt2Attention {
                        c_attn: Conv1D::new(&bp / "attn" / "c_attn", c.n_embd, 3 * c.n_embd)?,
                        c_proj: Conv1D::new(&bp / "attn" / "c_proj", c.n_embd, c.n_embd)?,
                        heads: c.n_head,
                    },
                    ln_2: LayerNorm::new(&bp / "ln_2", c.n_embd, c.layer_norm_epsilon)?,
                    mlp: Gpt2Mlp {
                        c_fc: Conv1D::new(&bp / "mlp" / "c_fc", c.n_embd, inner)?,
                        c_proj: Conv1D::new(&bp / "mlp" / "c_proj", inner, c.n_embd)?,
                        approximate,
                    },
                })
            })
            .collect::<Result<_, TchError>>()?;
        Ok(Gpt2Model {
            wte: Embedding::new(&p / "wte", c.vocab_size, c.n_embd)?,
            wpe: Embedding::new(&p / "wpe", c.n_positions, c.n_embd)?,
            h,
            ln_f: LayerNorm::new(&p / "ln_f", c.n_embd, c.layer_norm_epsilon)?,
        })
    }

    pub fn forward(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_valid: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor {
        let mut x = self.wte.forward(ids) + self.wpe.forward(positions);
        let mask = attention_mask(key_valid, ids.size()[1]);
        for (i, block) in self.h.iter().enumerate() {
            x = block.forward(&x, &mask, cache.as_deref_mut().map(|c| (c, i)));
        }
        self.ln_f.forward(&x)
    }
}
