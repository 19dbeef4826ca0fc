//! `p3o sft`: supervised fine-tuning ([C-SFT]) of a GPT-NeoX (or GPT-2) on
//! prompt/response pairs: the built-in toy corpus ([C-TOY-TASK]) or JSON
//! Lines of `{"prompt", "response"}`.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Kind, Tensor};

use super::builtin::{BUILTIN_MODEL, TOY_PROMPTS};
use super::config::{LrSchedule, Supervised, check_supervised, load_toml};
use super::data::{item_place, read_jsonl, split_heldout, string_field};
use super::error::{ConfigError, TrainError};
use super::models::{
    ModelSource, TokenizerFiles, device_of, load_model, progress_bar, tokenizer_of,
};
use super::optim::{AdamW, descend, learning_rate};
use super::scoring::token_window;
use super::seed::SeedPurpose;
use crate::device::DeviceSpec;
use crate::run_dir::{create_metrics, io_at};
use crate::torch::tokenizer::Tokenizer;
use crate::torch::{Head, LanguageModel};

/// Every key of an SFT config, with its default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    /// `builtin:tiny-neox` (seeded random weights) or an HF directory.
    pub base: String,
    /// `builtin:toy` or JSON Lines of `{"prompt", "response"}`.
    pub data: String,
    /// Examples drawn from the built-in corpus.
    pub corpus_size: usize,
    /// Share of the examples held out for the reported loss.
    pub heldout_fraction: f64,
    /// Optimizer steps.
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    pub lr_schedule: LrSchedule,
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 disables).
    pub max_grad_norm: f64,
    /// Held-out loss every this many steps (0: only at the start and end).
    pub eval_every: usize,
    pub seed: u64,
    pub device: DeviceSpec,
    /// CPU threads of libtorch (0: libtorch's default).
    pub threads: usize,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            base: BUILTIN_MODEL.into(),
            data: TOY_PROMPTS.into(),
            corpus_size: 8192,
            heldout_fraction: 0.05,
            steps: 600,
            batch_size: 64,
            lr: 3e-3,
            warmup_steps: 30,
            lr_schedule: LrSchedule::Cosine,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            eval_every: 100,
            seed: 0,
            device: DeviceSpec::Cpu,
            threads: 2,
        }
    }
}

impl SftConfig {
    pub fn load(file: Option<&Path>, sets: &[String]) -> Result<SftConfig, ConfigError> {
        let cfg: SftConfig = load_toml(file, sets)?;
        cfg.check()?;
        Ok(cfg)
    }

    /// The keys' ranges and the device ([`check_supervised`]).
    pub fn check(&self) -> Result<(), ConfigError> {
        check_supervised(&Supervised {
            counts: &[
                ("steps", self.steps),
                ("batch_size", self.batch_size),
                ("corpus_size", self.corpus_size),
            ],
            lr: self.lr,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            heldout_fraction: self.heldout_fraction,
            threads: self.threads,
            device: self.device,
        })
    }
}

/// Prompt/response pairs of `data`: the built-in corpus or JSON Lines.
pub fn load_pairs(
    data: &str,
    corpus_size: usize,
    seed: u64,
) -> Result<Vec<(String, String)>, TrainError> {
    if data == TOY_PROMPTS {
        return Ok(crate::toy::corpus(corpus_size, seed));
    }
    read_jsonl(Path::new(data), |v| {
        Ok((string_field(v, "prompt")?, string_field(v, "response")?))
    })
    .map_err(TrainError::Input)
}

/// Token ids of prompts and of responses followed by the end-of-text token.
struct Encoded {
    prompts: Vec<Vec<i64>>,
    responses: Vec<Vec<i64>>,
}

fn encode(
    pairs: &[(usize, (String, String))],
    tokenizer: &Tokenizer,
    max_positions: i64,
    place: &dyn Fn(usize) -> String,
) -> Result<Encoded, TrainError> {
    let eos = tokenizer.eos_token_id.ok_or_else(|| {
        TrainError::Input("the model config names no eos_token_id to end responses with".into())
    })?;
    let mut prompts = Vec::with_capacity(pairs.len());
    let mut responses = Vec::with_capacity(pairs.len());
    for (i, (p, r)) in pairs {
        let p_ids = tokenizer.encode(p)?;
        let mut r_ids = tokenizer.encode(r)?;
        r_ids.push(eos);
        let n = (p_ids.len() + r_ids.len()) as i64;
        if p_ids.is_empty() || n > max_positions {
            let why = if p_ids.is_empty() {
                "the prompt has no tokens".to_string()
            } else {
                format!("{n} tokens do not fit the model's {max_positions} positions")
            };
            return Err(TrainError::Input(format!("{}: {why}", place(*i))));
        }
        prompts.push(p_ids);
        responses.push(r_ids);
    }
    Ok(Encoded { prompts, responses })
}

/// The mean token cross-entropy of `rows` ([C-SFT]).
fn loss_of(model: &LanguageModel, data: &Encoded, rows: &[usize]) -> Result<Tensor, TrainError> {
    let pick = |v: &Vec<Vec<i64>>| rows.iter().map(|&r| v[r].clone()).collect::<Vec<_>>();
    let w = token_window(model, None, &pick(&data.prompts), &pick(&data.responses))?;
    Ok(-w.lp.sum(Kind::Float) / w.mask.sum(Kind::Float))
}

/// The mean cross-entropy over every held-out token, in chunks.
fn heldout_loss(model: &LanguageModel, data: &Encoded) -> Result<f64, TrainError> {
    let (mut total, mut tokens) = (0.0, 0usize);
    let n = data.prompts.len();
    for chunk in (0..n).collect::<Vec<_>>().chunks(256) {
        let count: usize = chunk.iter().map(|&r| data.responses[r].len()).sum();
        let l = tch::no_grad(|| loss_of(model, data, chunk))?;
        total += l.double_value(&[]) * count as f64;
        tokens += count;
    }
    Ok(total / tokens.max(1) as f64)
}

/// What `p3o sft` reports at the end.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SftSummary {
    pub examples: usize,
    pub heldout_examples: usize,
    /// Held-out mean token cross-entropy before and after training.
    pub initial_heldout_loss: f64,
    pub final_heldout_loss: f64,
    pub model: PathBuf,
}

/// Trains, writing `out/metrics.jsonl` and the model in HF layout to
/// `out/final` (config.json, model.safetensors, tokenizer.json).
pub fn run_sft(cfg: &SftConfig, out: &Path) -> Result<SftSummary, TrainError> {
    cfg.check()?;
    let device = device_of(cfg.device, "config key `device`")?;
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    // SFT trains and saves full weights: an adapter would be dropped.
    if matches!(ModelSource::parse(&cfg.base), ModelSource::Adapter(_)) {
        return Err(TrainError::Input(format!(
            "config key `base`: `{}` is a LoRA adapter directory; fold it into its base first (p3o lora merge)",
            cfg.base
        )));
    }
    let model = load_model(&cfg.base, Head::Lm, cfg.seed, device)?;
    let tokenizer = tokenizer_of(&cfg.base, &model.config)?;
    let tokenizer_files = TokenizerFiles::of(&cfg.base)?;
    // Each pair keeps its place in the file, for messages; the shuffle of
    // the split is the same with it as without.
    let numbered: Vec<(usize, (String, String))> =
        load_pairs(&cfg.data, cfg.corpus_size, cfg.seed)?
            .into_iter()
            .enumerate()
            .collect();
    let (pairs, heldout_pairs) = split_heldout(
        numbered,
        cfg.heldout_fraction,
        SeedPurpose::SftHeldout.of(cfg.seed),
    );
    let max = model.config.max_positions();
    let place = |i: usize| item_place(&cfg.data, i);
    let train = encode(&pairs, &tokenizer, max, &place)?;
    let heldout = encode(&heldout_pairs, &tokenizer, max, &place)?;

    let (metrics_path, mut metrics) = create_metrics(out)?;
    let mut opt = AdamW::new(&[&model.vs], cfg.weight_decay);
    let eval = || -> Result<Option<f64>, TrainError> {
        if heldout.prompts.is_empty() {
            return Ok(None);
        }
        heldout_loss(&model, &heldout).map(Some)
    };
    let initial = eval()?;
    let mut last = initial;
    writeln!(
        metrics,
        "{}",
        json!({"step": 0, "split": "heldout", "loss": initial})
    )?;
    let bar = progress_bar(cfg.steps as u64, "SFT steps");
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = Vec::new();
    for step in 1..=cfg.steps {
        let mut rows = Vec::with_capacity(cfg.batch_size);
        while rows.len() < cfg.batch_size.min(train.prompts.len()) {
            if order.is_empty() {
                order = (0..train.prompts.len()).collect();
                order.shuffle(&mut rng);
            }
            rows.push(order.pop().expect("refilled above"));
        }
        let loss = loss_of(&model, &train, &rows)?;
        let lr = learning_rate(
            cfg.lr,
            cfg.lr_schedule,
            cfg.warmup_steps,
            step - 1,
            cfg.steps,
        );
        let (loss_v, norm) = descend(&mut opt, &loss, cfg.max_grad_norm, lr).map_err(|l| {
            TrainError::NonFinite(format!("SFT step {step}: the loss is {l}; lower lr"))
        })?;
        let mut line =
            json!({"step": step, "split": "train", "loss": loss_v, "grad_norm": norm, "lr": lr});
        writeln!(metrics, "{line}").map_err(io_at(&metrics_path))?;
        if step == cfg.steps || (cfg.eval_every > 0 && step.is_multiple_of(cfg.eval_every)) {
            last = eval()?;
            line = json!({"step": step, "split": "heldout", "loss": last});
            writeln!(metrics, "{line}").map_err(io_at(&metrics_path))?;
        }
        bar.set_message(format!("loss {loss_v:.3}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let final_dir = out.join("final");
    crate::run_dir::replace_dir(&final_dir, |d| -> Result<(), TrainError> {
        model.save(d)?;
        tokenizer_files.write(d)
    })?;
    Ok(SftSummary {
        examples: train.prompts.len(),
        heldout_examples: heldout.prompts.len(),
        initial_heldout_loss: initial.unwrap_or(f64::NAN),
        final_heldout_loss: last.unwrap_or(f64::NAN),
        model: final_dir,
    })
}
