//! A loaded model: the transformer body of either architecture with an LM
//! head (policy, reference) or a scalar `score` head (reward model).

use std::path::Path as FsPath;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::config::{Architecture, ModelConfig};
use super::gpt_neox::GptNeoxModel;
use super::gpt2::Gpt2Model;
use super::kv_cache::KvCache;
use super::layers::Linear;
use super::{Result, TorchError};
use super::{checkpoint, memory};

/// Which head sits on the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Next-token logits (`GPTNeoXForCausalLM`, `GPT2LMHeadModel`).
    Lm,
    /// One scalar per sequence (`*ForSequenceClassification` with one label,
    /// weight `score.weight`).
    Score,
}

enum Body {
    GptNeox(GptNeoxModel),
    Gpt2(Gpt2Model),
}

pub struct LanguageModel {
    pub vs: VarStore,
    pub config: ModelConfig,
    pub head: Head,
    body: Body,
    /// GPT-NeoX's untied `embed_out`; GPT-2's head is its tied `wte`.
    embed_out: Option<Linear>,
    score: Option<Linear>,
}

impl LanguageModel {
    /// A model with every weight zero (layer norms one), to be loaded. The
    /// parameters must fit in the memory `device` has free ([`memory`]), and
    /// an allocation that fails anyway is an error, not a panic.
    pub fn new(config: ModelConfig, head: Head, device: Device) -> Result<LanguageModel> {
        memory::check_fits(&config, device)?;
        let vs = VarStore::new(device);
        let root = vs.root();
        let hidden = config.hidden_size();
        let (body, embed_out) = match &config.arch {
            Architecture::GptNeox(c) => (
                Body::GptNeox(GptNeoxModel::new(&root / "gpt_neox", c)?),
                (head == Head::Lm)
                    .then(|| Linear::new(&root / "embed_out", hidden, c.vocab_size, false))
                    .transpose()?,
            ),
            Architecture::Gpt2(c) => (Body::Gpt2(Gpt2Model::new(&root / "transformer", c)?), None),
        };
        let score = (head == Head::Score)
            .then(|| Linear::new(&root / "score", hidden, 1, false))
            .transpose()?;
        Ok(LanguageModel {
            vs,
            config,
            head,
            body,
            embed_out,
            score,
        })
    }

    /// Loads `dir/config.json` and the safetensors weights (single file or
    /// sharded), on `device`, converted to `kind`.
    pub fn load(dir: &FsPath, head: Head, device: Device, kind: Kind) -> Result<LanguageModel> {
        let config = ModelConfig::load(dir)?;
        let mut model = LanguageModel::new(config, head, device).map_err(|e| match e {
            TorchError::Input(m) => super::file_error(&dir.join("config.json"), m),
            other => other,
        })?;
        checkpoint::load_into(&model.vs, dir)?;
        model.vs.set_kind(kind);
        Ok(model)
    }

    /// Writes `config.json` and `model.safetensors` in HF layout.
    pub fn save(&self, dir: &FsPath) -> Result<()> {
        checkpoint::save(&self.vs, &self.config.raw, dir)
    }

    pub fn num_layers(&self) -> usize {
        match &self.body {
            Body::GptNeox(m) => m.layers.len(),
            Body::Gpt2(m) => m.h.len(),
        }
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// A KV cache for sequences of up to `capacity` positions.
    pub fn new_cache(&self, capacity: i64) -> KvCache {
        KvCache::new(self.num_layers(), capacity)
    }

    /// Final hidden states `[b, t, h]` of `ids: [b, t]` at `positions: [b, t]`,
    /// with `key_valid: [b, T]` marking the non-padding keys of the whole
    /// sequence so far (the cache's `T - t` and these `t`).
    pub fn hidden(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_valid: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        match &self.body {
            Body::GptNeox(m) => m.forward(ids, positions, key_valid, cache),
            Body::Gpt2(m) => m.forward(ids, positions, key_valid, cache),
        }
    }

    /// Next-token logits `[b, t, V]` from hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match (&self.body, &self.embed_out) {
            (_, Some(head)) => Ok(head.forward(hidden)),
            (Body::Gpt2(m), None) if self.head == Head::Lm => Ok(hidden.matmul(&m.wte.weight.tr())),
            _ => Err(TorchError::Input(
                "this model has a reward head, not an LM head".into(),
            )),
        }
    }

    /// Logits `[b, V]` of one position per row, `hidden: [b, H]` (decoding
    /// steps). The same numbers as [`Self::logits`], computed as
    /// `(W h^T)^T` with the `[V, H]` head as the left operand: with a few
    /// rows MKL streams it about 1.5x faster that way round (BENCHMARKS.md).
    pub fn row_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let (weight, bias) = match (&self.body, &self.embed_out) {
            (_, Some(head)) => (&head.weight, head.bias.as_ref()),
            (Body::Gpt2(m), None) if self.head == Head::Lm => (&m.wte.weight, None),
            _ => {
                return Err(TorchError::Input(
                    "this model has a reward head, not an LM head".into(),
                ));
            }
        };
        let logits = weight.mm(&hidden.tr()).tr().contiguous();
        Ok(match bias {
            Some(b) => logits + b,
            None => logits,
        })
    }

    /// The reward head's scalar at every position `[b, t]`.
    pub fn scores(&self, hidden: &Tensor) -> Result<Tensor> {
        let score = self
            .score
            .as_ref()
            .ok_or_else(|| TorchError::Input("this model has no reward head".into()))?;
        Ok(score.forward(hidden).squeeze_dim(-1))
    }
}

/// HF generate's position ids for left-padded rows: `cumsum(mask) - 1`,
/// padding clamped to 0.
pub fn positions_from_mask(mask: &Tensor) -> Tensor {
    (mask.to_kind(Kind::Int64).cumsum(-1, Kind::Int64) - 1).clamp_min(0)
}
