//! A loaded model: the transformer body of any family with an LM head
//! (policy, reference) or a scalar `score` head (reward model).

use std::path::Path as FsPath;

use tch::nn::{Init, VarStore};
use tch::{Device, Kind, Tensor};

use super::config::ModelConfig;
use super::models::Body;
use super::nn::{KvCache, Linear, LoraPlan, LoraSpec};
use super::{Result, TorchError};
use super::{checkpoint, memory};

/// Which head sits on the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Next-token logits (`*ForCausalLM`, `GPT2LMHeadModel`).
    Lm,
    /// One scalar per sequence (`*ForSequenceClassification` with one label,
    /// weight `score.weight`).
    Score,
}

/// The LM head: its own `[V, H]` weight, or the token embedding's when
/// tied (the same tensor, so gradients reach the embedding), and a bias
/// where the family has one.
struct LmHead {
    weight: Tensor,
    bias: Option<Tensor>,
}

pub struct LanguageModel {
    pub vs: VarStore,
    pub config: ModelConfig,
    pub head: Head,
    /// The layers' LoRA adapters ([C-LORA]), in a store of their own.
    pub lora: LoraPlan,
    body: Body,
    lm_head: Option<LmHead>,
    score: Option<Linear>,
}

impl LanguageModel {
    /// A model with every weight zero (norm scales one), to be loaded. The
    /// parameters must fit in the memory `device` has free ([`memory`]), and
    /// an allocation that fails anyway is an error, not a panic.
    pub fn new(config: ModelConfig, head: Head, device: Device) -> Result<LanguageModel> {
        LanguageModel::with_plan(config, head, device, LoraPlan::none())
    }

    /// [`LanguageModel::new`] with LoRA adapters of `spec` on the layers'
    /// projections it targets ([C-LORA]): `A` drawn by libtorch's generator
    /// seeded with `seed`, `B` zero, so that the model starts as its base.
    pub fn with_lora(
        config: ModelConfig,
        head: Head,
        device: Device,
        spec: LoraSpec,
        seed: u64,
    ) -> Result<LanguageModel> {
        tch::manual_seed(seed as i64);
        LanguageModel::with_plan(config, head, device, LoraPlan::new(spec, device))
    }

    fn with_plan(
        config: ModelConfig,
        head: Head,
        device: Device,
        lora: LoraPlan,
    ) -> Result<LanguageModel> {
        memory::check_fits(&config, device)?;
        let vs = VarStore::new(device);
        let root = vs.root();
        let (vocab, hidden) = (config.vocab_size(), config.hidden_size());
        let body = Body::new(vs.root(), &config.arch, &lora)?;
        let lm_head = match head {
            Head::Score => None,
            Head::Lm => {
                let spec = config.arch.lm_head();
                let p = &root / spec.name;
                let weight = if spec.tied {
                    body.token_embedding().shallow_clone()
                } else {
                    p.f_var("weight", &[vocab, hidden], Init::Const(0.0))?
                };
                let bias = spec
                    .bias
                    .then(|| p.f_var("bias", &[vocab], Init::Const(0.0)))
                    .transpose()?;
                Some(LmHead { weight, bias })
            }
        };
        let score = (head == Head::Score)
            .then(|| Linear::new(&root / "score", hidden, 1, false))
            .transpose()?;
        Ok(LanguageModel {
            vs,
            config,
            head,
            lora,
            body,
            lm_head,
            score,
        })
    }

    /// A model of `config`'s shape with random weights: every matrix and
    /// embedding from N(0, s^2), `s` the config's `initializer_range` (HF's
    /// 0.02 when absent); biases 0 and norm scales 1 (the rank-1 parameters
    /// keep what [`LanguageModel::new`] gives them). Drawn by libtorch's
    /// generator seeded with `seed`, parameters in name order: the same seed
    /// gives the same weights on the same kind of device.
    pub fn random(
        config: ModelConfig,
        head: Head,
        device: Device,
        seed: u64,
    ) -> Result<LanguageModel> {
        let std = LanguageModel::initializer_range(&config)?;
        let model = LanguageModel::new(config, head, device)?;
        model.randomize(seed, std)?;
        Ok(model)
    }

    /// The standard deviation [`LanguageModel::random`] draws with: the
    /// config's `initializer_range`, or 0.02.
    pub fn initializer_range(config: &ModelConfig) -> Result<f64> {
        match config.raw.get("initializer_range") {
            None => Ok(0.02),
            Some(v) => v
                .as_f64()
                .filter(|s| s.is_finite() && *s > 0.0)
                .ok_or_else(|| {
                    TorchError::Input(format!(
                        "initializer_range: {v} must be a positive finite number"
                    ))
                }),
        }
    }

    /// Draws every base matrix and embedding as [`LanguageModel::random`]
    /// says (adapters keep theirs).
    pub fn randomize(&self, seed: u64, std: f64) -> Result<()> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        tch::manual_seed(seed as i64);
        tch::no_grad(|| -> Result<()> {
            for (_, mut var) in vars {
                if var.dim() >= 2 {
                    let _ = var.f_normal_(0.0, std)?;
                }
            }
            Ok(())
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

    /// [`LanguageModel::load`] with LoRA adapters of `spec` (seeded as in
    /// [`LanguageModel::with_lora`]) on the loaded base weights.
    pub fn load_with_lora(
        dir: &FsPath,
        head: Head,
        device: Device,
        kind: Kind,
        spec: LoraSpec,
        seed: u64,
    ) -> Result<LanguageModel> {
        let config = ModelConfig::load(dir)?;
        let mut model = LanguageModel::with_lora(config, head, device, spec, seed)?;
        checkpoint::load_into(&model.vs, dir)?;
        model.vs.set_kind(kind);
        Ok(model)
    }

    /// Folds every adapter into its base weight, `W + s B A` (transposed for
    /// GPT-2's `Conv1D`, PEFT's `fan_in_fan_out`), and switches the adapters
    /// off: the model then computes what it computed with them, as a plain
    /// model ([C-LORA]).
    pub fn merge_adapters(&self) -> Result<()> {
        let (Some(spec), Some(adapters)) = (self.lora.spec(), self.lora.var_store()) else {
            return Ok(());
        };
        let base = self.vs.variables();
        let factors = adapters.variables();
        let transposed = self.config.arch.fan_in_fan_out();
        tch::no_grad(|| -> Result<()> {
            for (name, a) in &factors {
                let Some(module) = name.strip_suffix(".lora_A.weight") else {
                    continue;
                };
                let missing = |what: String| TorchError::Tensor {
                    name: what,
                    message: "an adapter without its pair or base weight".into(),
                };
                let b = factors
                    .get(&format!("{module}.lora_B.weight"))
                    .ok_or_else(|| missing(format!("{module}.lora_B.weight")))?;
                let mut w = base
                    .get(&format!("{module}.weight"))
                    .ok_or_else(|| missing(format!("{module}.weight")))?
                    .shallow_clone();
                let mut delta = b.f_matmul(a)?.f_mul_scalar(spec.scale())?;
                if transposed {
                    delta = delta.f_t_()?.f_contiguous()?;
                }
                let merged = w.f_add(&delta.f_to_kind(w.kind())?)?;
                w.f_copy_(&merged)?;
            }
            Ok(())
        })?;
        self.lora.set_enabled(false);
        Ok(())
    }

    /// Writes `config.json` and `model.safetensors` in HF layout.
    pub fn save(&self, dir: &FsPath) -> Result<()> {
        checkpoint::save(&self.vs, &self.config.raw, dir)
    }

    pub fn num_layers(&self) -> usize {
        self.body.num_layers()
    }

    /// The transformer body, stage by stage.
    pub(crate) fn body(&self) -> &Body {
        &self.body
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
    ) -> Result<Tensor> {
        self.body.forward(ids, positions, key_valid, cache)
    }

    fn head(&self) -> Result<&LmHead> {
        self.lm_head
            .as_ref()
            .ok_or_else(|| TorchError::Input("this model has a reward head, not an LM head".into()))
    }

    /// The LM head's weight `[V, H]` and bias `[V]` (if any).
    pub fn lm_head_parameters(&self) -> Result<(&Tensor, Option<&Tensor>)> {
        let head = self.head()?;
        Ok((&head.weight, head.bias.as_ref()))
    }

    /// Next-token logits `[b, t, V]` from hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let head = self.head()?;
        Ok(hidden.f_linear(&head.weight, head.bias.as_ref())?)
    }

    /// Logits `[b, V]` of one position per row, `hidden: [b, H]` (decoding
    /// steps). The same numbers as [`Self::logits`], computed as
    /// `(W h^T)^T` with the `[V, H]` head as the left operand: with a few
    /// rows MKL streams it about 1.5x faster that way round (BENCHMARKS.md).
    pub fn row_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let head = self.head()?;
        let logits = head.weight.f_mm(&hidden.f_tr()?)?.f_tr()?.f_contiguous()?;
        Ok(match &head.bias {
            Some(b) => logits.f_add(b)?,
            None => logits,
        })
    }

    /// The reward head's scalar at every position `[b, t]`.
    pub fn scores(&self, hidden: &Tensor) -> Result<Tensor> {
        let score = self
            .score
            .as_ref()
            .ok_or_else(|| TorchError::Input("this model has no reward head".into()))?;
        Ok(score.forward(hidden)?.f_squeeze_dim(-1)?)
    }
}

/// HF generate's position ids for left-padded rows: `cumsum(mask) - 1`,
/// padding clamped to 0.
pub fn positions_from_mask(mask: &Tensor) -> Tensor {
    (mask.to_kind(Kind::Int64).cumsum(-1, Kind::Int64) - 1).clamp_min(0)
}
