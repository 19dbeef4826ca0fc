//! `p3o reward-model train`: Bradley-Terry training ([C-BT-TRAIN], Eq. 1) of
//! a scalar-head model on chosen/rejected pairs.
//!
//! Input lines are either Anthropic HH (`{"chosen", "rejected"}`, both whole
//! dialogues) or `{"prompt", "chosen", "rejected"}` with the two responses
//! apart from their prompt; either way the model scores the whole text.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Kind, Tensor};

use super::config::{LrSchedule, Supervised, check_supervised, load_toml};
use super::data::{item_place, read_jsonl, split_heldout, string_field};
use super::error::{ConfigError, TrainError};
use super::models::{TokenizerFiles, device_of, progress_bar, tokenizer_of};
use super::optim::{AdamW, descend, learning_rate};
use super::seed::SeedPurpose;
use crate::device::DeviceSpec;
use crate::run_dir::{create_metrics, io_at};
use crate::torch::checkpoint::load_into_except;
use crate::torch::config::ModelConfig;
use crate::torch::generate::left_pad;
use crate::torch::reward::rewards;
use crate::torch::tokenizer::Tokenizer;
use crate::torch::{Head, LanguageModel};

/// Every key of a reward-model config, with its default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardModelConfig {
    /// HF directory of the model to start from (a causal LM gets a new
    /// `score` head, initialised to zero).
    pub base: String,
    /// JSON Lines of preference pairs.
    pub data: String,
    /// Share of the pairs held out for accuracy.
    pub heldout_fraction: f64,
    /// Passes over the training pairs.
    pub epochs: usize,
    /// Pairs per optimizer step.
    pub batch_size: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    pub lr_schedule: LrSchedule,
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 disables).
    pub max_grad_norm: f64,
    pub seed: u64,
    pub device: DeviceSpec,
    /// CPU threads of libtorch (0: libtorch's default).
    pub threads: usize,
}

impl Default for RewardModelConfig {
    fn default() -> Self {
        RewardModelConfig {
            base: String::new(),
            data: String::new(),
            heldout_fraction: 0.1,
            epochs: 2,
            batch_size: 32,
            lr: 1e-3,
            warmup_steps: 10,
            lr_schedule: LrSchedule::Cosine,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed: 0,
            device: DeviceSpec::Cpu,
            threads: 2,
        }
    }
}

impl RewardModelConfig {
    pub fn load(file: Option<&Path>, sets: &[String]) -> Result<RewardModelConfig, ConfigError> {
        let cfg: RewardModelConfig = load_toml(file, sets)?;
        cfg.check()?;
        Ok(cfg)
    }

    /// The keys' ranges and the device ([`check_supervised`]).
    pub fn check(&self) -> Result<(), ConfigError> {
        check_supervised(&Supervised {
            counts: &[("epochs", self.epochs), ("batch_size", self.batch_size)],
            lr: self.lr,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            heldout_fraction: self.heldout_fraction,
            threads: self.threads,
            device: self.device,
        })
    }
}

/// One preference: the whole chosen and rejected texts.
#[derive(Clone, Debug, PartialEq)]
pub struct Preference {
    pub chosen: String,
    pub rejected: String,
}

/// Reads preference pairs; a malformed line is an error naming it.
pub fn load_preferences(path: &Path) -> Result<Vec<Preference>, TrainError> {
    read_jsonl(path, |v| {
        let prompt = match v.get("prompt") {
            Some(_) => string_field(v, "prompt")?,
            None => String::new(),
        };
        Ok(Preference {
            chosen: format!("{prompt}{}", string_field(v, "chosen")?),
            rejected: format!("{prompt}{}", string_field(v, "rejected")?),
        })
    })
    .map_err(TrainError::Input)
}

/// A scalar-head model on the body of the HF model in `dir`; its `score`
/// head is read from there when present, else starts at zero.
pub fn reward_model_from(dir: &Path, device: tch::Device) -> Result<LanguageModel, TrainError> {
    if !dir.join("config.json").is_file() {
        return Err(TrainError::Input(format!(
            "config key `base`: `{}` is not an HF model directory",
            dir.display()
        )));
    }
    let mut config = ModelConfig::load(dir)?;
    let arch = config.family().sequence_classification();
    config.raw["architectures"] = json!([arch]);
    config.raw["id2label"] = json!({"0": "LABEL_0"});
    config.raw["label2id"] = json!({"LABEL_0": 0});
    if config.raw.get("pad_token_id").is_none_or(|v| v.is_null()) {
        config.raw["pad_token_id"] = json!(config.eos_token_id);
    }
    let model = LanguageModel::new(config, Head::Score, device).map_err(|e| match e {
        crate::torch::TorchError::Input(m) => {
            TrainError::Input(format!("{}: {m}", dir.join("config.json").display()))
        }
        other => other.into(),
    })?;
    load_into_except(&model.vs, dir, &["score.weight"])?;
    Ok(model)
}

/// Token ids of every chosen and rejected text.
struct Encoded {
    chosen: Vec<Vec<i64>>,
    rejected: Vec<Vec<i64>>,
}

fn encode(
    prefs: &[(usize, Preference)],
    tok: &Tokenizer,
    max: i64,
    place: &dyn Fn(usize) -> String,
) -> Result<Encoded, TrainError> {
    let mut e = Encoded {
        chosen: Vec::new(),
        rejected: Vec::new(),
    };
    for (i, p) in prefs {
        for (text, side) in [(&p.chosen, "chosen"), (&p.rejected, "rejected")] {
            let ids = tok.encode(text)?;
            if ids.is_empty() || ids.len() as i64 > max {
                return Err(TrainError::Input(format!(
                    "{}: the {side} text has {} tokens (the model takes 1 to {max})",
                    place(*i),
                    ids.len()
                )));
            }
            if side == "chosen" {
                e.chosen.push(ids);
            } else {
                e.rejected.push(ids);
            }
        }
    }
    Ok(e)
}

/// Rewards of the chosen and of the rejected texts of `rows`.
fn pair_rewards(
    model: &LanguageModel,
    data: &Encoded,
    rows: &[usize],
) -> Result<(Tensor, Tensor), TrainError> {
    let texts: Vec<Vec<i64>> = rows
        .iter()
        .map(|&r| data.chosen[r].clone())
        .chain(rows.iter().map(|&r| data.rejected[r].clone()))
        .collect();
    let (ids, mask) = left_pad(&texts, 0, model.device());
    let r = rewards(model, &ids, &mask)?;
    let n = rows.len() as i64;
    Ok((r.narrow(0, 0, n), r.narrow(0, n, n)))
}

/// Mean Bradley-Terry loss `-log sigma(r_w - r_l)` ([C-BT-TRAIN]).
fn bt_loss(chosen: &Tensor, rejected: &Tensor) -> Tensor {
    (chosen - rejected).log_sigmoid().neg().mean(Kind::Float)
}

/// Held-out (loss, accuracy), in chunks.
fn heldout_metrics(model: &LanguageModel, data: &Encoded) -> Result<(f64, f64), TrainError> {
    let n = data.chosen.len();
    let (mut loss, mut correct) = (0.0, 0.0);
    for chunk in (0..n).collect::<Vec<_>>().chunks(128) {
        let (c, r) = tch::no_grad(|| pair_rewards(model, data, chunk))?;
        loss += bt_loss(&c, &r).double_value(&[]) * chunk.len() as f64;
        correct += c
            .gt_tensor(&r)
            .to_kind(Kind::Double)
            .sum(Kind::Double)
            .double_value(&[]);
    }
    Ok((loss / n as f64, correct / n as f64))
}

/// What `p3o reward-model train` reports at the end.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RewardModelSummary {
    pub train_pairs: usize,
    pub heldout_pairs: usize,
    /// Held-out accuracy before training (a zero head ties every pair: 0)
    /// and after.
    pub initial_heldout_accuracy: f64,
    pub heldout_accuracy: f64,
    pub heldout_loss: f64,
    pub model: PathBuf,
}

/// Trains, writing `out/metrics.jsonl` and the model in HF layout to
/// `out/final`.
pub fn train_reward_model(
    cfg: &RewardModelConfig,
    out: &Path,
) -> Result<RewardModelSummary, TrainError> {
    cfg.check()?;
    if cfg.base.is_empty() || cfg.data.is_empty() {
        return Err(TrainError::Input(
            "a reward model needs a base model (--base) and preference data (--data)".into(),
        ));
    }
    let device = device_of(cfg.device, "config key `device`")?;
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    let base = Path::new(&cfg.base);
    let prefs = load_preferences(Path::new(&cfg.data))?;
    let model = reward_model_from(base, device)?;
    let tokenizer = tokenizer_of(&cfg.base, &model.config)?;
    let tokenizer_files = TokenizerFiles::of(&cfg.base)?;
    // Each pair keeps its place in the file, for messages; the shuffle of
    // the split is the same with it as without.
    let (prefs, heldout_prefs) = split_heldout(
        prefs.into_iter().enumerate().collect::<Vec<_>>(),
        cfg.heldout_fraction,
        SeedPurpose::RewardModelHeldout.of(cfg.seed),
    );
    let max = model.config.max_positions();
    let place = |i: usize| item_place(&cfg.data, i);
    let train = encode(&prefs, &tokenizer, max, &place)?;
    let heldout = encode(&heldout_prefs, &tokenizer, max, &place)?;

    let (metrics_path, mut metrics) = create_metrics(out)?;
    let eval = |step: usize, metrics: &mut std::fs::File| -> Result<(f64, f64), TrainError> {
        if heldout.chosen.is_empty() {
            return Ok((f64::NAN, f64::NAN));
        }
        let (loss, acc) = heldout_metrics(&model, &heldout)?;
        writeln!(
            metrics,
            "{}",
            json!({"step": step, "split": "heldout", "loss": loss, "accuracy": acc})
        )
        .map_err(io_at(&metrics_path))?;
        Ok((loss, acc))
    };
    let (_, initial_acc) = eval(0, &mut metrics)?;
    let per_epoch = train.chosen.len().div_ceil(cfg.batch_size);
    let total = per_epoch * cfg.epochs;
    let mut opt = AdamW::new(&[&model.vs], cfg.weight_decay);
    let bar = progress_bar(total as u64, "reward-model steps");
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut step = 0;
    for _ in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..train.chosen.len()).collect();
        order.shuffle(&mut rng);
        for rows in order.chunks(cfg.batch_size) {
            let (c, r) = pair_rewards(&model, &train, rows)?;
            let lr = learning_rate(cfg.lr, cfg.lr_schedule, cfg.warmup_steps, step, total);
            let (loss_v, norm) = descend(&mut opt, &bt_loss(&c, &r), cfg.max_grad_norm, lr)
                .map_err(|l| {
                    TrainError::NonFinite(format!(
                        "reward-model step {}: the loss is {l}; lower lr",
                        step + 1
                    ))
                })?;
            step += 1;
            writeln!(
                metrics,
                "{}",
                json!({"step": step, "split": "train", "loss": loss_v, "grad_norm": norm, "lr": lr})
            )
            .map_err(io_at(&metrics_path))?;
            bar.set_message(format!("loss {loss_v:.3}"));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let (loss, acc) = eval(step, &mut metrics)?;
    let final_dir = out.join("final");
    crate::run_dir::replace_dir(&final_dir, |d| -> Result<(), TrainError> {
        model.save(d)?;
        tokenizer_files.write(d)
    })?;
    Ok(RewardModelSummary {
        train_pairs: train.chosen.len(),
        heldout_pairs: heldout.chosen.len(),
        initial_heldout_accuracy: initial_acc,
        heldout_accuracy: acc,
        heldout_loss: loss,
        model: final_dir,
    })
}
