//! The configuration of `p3o train`: a TOML file (every key optional, the
//! built-in default otherwise) and `--set key=value` overrides. Keys with a
//! closed set of values are enums, so a bad value fails at parse with the
//! key named and the allowed values listed.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::builtin::{BUILTIN_MODEL, BUILTIN_PROMPTS, BUILTIN_REWARD};
use super::error::ConfigError;
use crate::device::DeviceSpec;
use crate::reference;
pub use crate::reference::group_losses::ScaleRewards;
use crate::torch::generate::{MAX_NEW_TOKENS, temperature_problem};
use crate::torch::nn::{LoraSpec, LoraTargets};

/// The algorithms `p3o train` runs (config key `algorithm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// [C-P3O-V1]
    #[serde(rename = "p3o-v1")]
    P3oV1,
    /// [C-P3O-V2]
    #[serde(rename = "p3o-v2")]
    P3oV2,
    /// Online DPO ([C-DPO]).
    #[serde(rename = "dpo")]
    Dpo,
    /// Token-level PPO with a value head ([C-PPO-TOKEN]).
    #[serde(rename = "ppo")]
    Ppo,
    /// REINFORCE leave-one-out over each group ([C-RLOO]).
    #[serde(rename = "rloo")]
    Rloo,
    /// Group-relative policy optimisation ([C-GRPO]).
    #[serde(rename = "grpo")]
    Grpo,
    /// P3O as the authors' code trains it ([C-P3O-TRLX]).
    #[serde(rename = "p3o-trlx")]
    P3oTrlx,
}

impl Algorithm {
    /// Every algorithm, in the order of the README's table.
    pub const ALL: [Algorithm; 7] = [
        Algorithm::P3oV1,
        Algorithm::P3oV2,
        Algorithm::Dpo,
        Algorithm::Ppo,
        Algorithm::Rloo,
        Algorithm::Grpo,
        Algorithm::P3oTrlx,
    ];

    /// The algorithm's clause in the float64 reference.
    pub fn reference(self) -> reference::Algorithm {
        match self {
            Algorithm::P3oV1 => reference::Algorithm::P3oV1,
            Algorithm::P3oV2 => reference::Algorithm::P3oV2,
            Algorithm::Dpo => reference::Algorithm::Dpo,
            Algorithm::Ppo => reference::Algorithm::Ppo,
            Algorithm::Rloo => reference::Algorithm::Rloo,
            Algorithm::Grpo => reference::Algorithm::Grpo,
            Algorithm::P3oTrlx => reference::Algorithm::P3oTrlx,
        }
    }

    /// Its name in configs and metrics.
    pub fn name(self) -> &'static str {
        self.reference().name()
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The learning rate after warm-up (config key `lr_schedule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    Constant,
    /// Linear decay to 0 at the last step.
    Linear,
    /// Half a cosine down to 0 at the last step.
    Cosine,
}

/// The policy's compute dtype (config key `dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    /// bfloat16 compute; AdamW keeps float32 master weights.
    Bf16,
}

/// Where the training forward's token log-probs come from (config key
/// `kernels`; `crate::train::kernels`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelBackend {
    /// libtorch ops under autograd.
    Torch,
    /// The float64 reference, chained into autograd (a slow check).
    Reference,
    /// The hand-written CUDA kernels (features `cuda` and `torch`, a CUDA
    /// device).
    Cuda,
    /// The same kernel sources run on the CPU (feature `cuda`, `device =
    /// cpu`; a very slow check).
    CudaHost,
}

impl KernelBackend {
    /// Its name in configs.
    pub fn name(self) -> &'static str {
        match self {
            KernelBackend::Torch => "torch",
            KernelBackend::Reference => "reference",
            KernelBackend::Cuda => "cuda",
            KernelBackend::CudaHost => "cuda-host",
        }
    }
}

/// PPO's treatment of the scores (config key `reward_scaling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RewardScaling {
    None,
    /// Scores over the running standard deviation of all scores so far.
    Running,
}

/// Config key `lora_target_modules`: a TOML list of module names or one
/// string of them separated by commas (`all-linear`: every projection).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LoraModules {
    One(String),
    Many(Vec<String>),
}

impl LoraModules {
    pub fn names(&self) -> Vec<String> {
        match self {
            LoraModules::One(s) => vec![s.clone()],
            LoraModules::Many(v) => v.clone(),
        }
    }
}

/// Every key of a training config, with its default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub algorithm: Algorithm,
    /// Training steps (one rollout each).
    pub steps: usize,
    pub seed: u64,
    /// Peak learning rate of AdamW.
    pub lr: f64,
    /// KL coefficient of the shaped reward; DPO's beta.
    pub beta: f64,
    /// Clip half-width ([C-CLIP]); `inf` leaves the ratios unclipped.
    #[serde(with = "non_finite")]
    pub epsilon: f64,
    /// Prompts per step.
    pub batch_size: usize,
    /// Responses sampled per prompt, a group ([C-GROUP]): at least 2 for
    /// every algorithm but PPO, which samples one and refuses the key.
    pub responses_per_prompt: usize,
    /// Passes over each rollout.
    pub epochs: usize,
    /// Prompts (each with its group of responses) per minibatch.
    pub minibatch_size: usize,
    /// Minibatches whose gradients are summed before one optimizer step.
    pub grad_accum: usize,
    /// Global gradient-norm clip (0 disables).
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    /// Linear warm-up steps (optimizer steps).
    pub warmup_steps: usize,
    pub lr_schedule: LrSchedule,
    pub max_new_tokens: i64,
    pub temperature: f64,
    pub top_k: Option<i64>,
    pub top_p: Option<f64>,
    /// An HF directory, `builtin:tiny-neox` or `random:PATH` (a config's
    /// shape with seeded random weights, [`ModelSource::Random`]).
    ///
    /// [`ModelSource::Random`]: crate::train::models::ModelSource::Random
    pub policy: String,
    /// An HF directory; empty means a frozen copy of the initial policy.
    pub reference: String,
    /// An HF reward-model directory, `builtin:vowels` or `builtin:toy-gold`.
    pub reward: String,
    /// A second reward reported on eval lines as `gold_reward_mean` (e.g.
    /// `builtin:toy-gold`); empty for none.
    pub gold_reward: String,
    /// JSON Lines of prompts (`{"prompt"}`, TL;DR `{"prompt", "label"}`, or
    /// Anthropic HH `{"chosen", "rejected"}`), `builtin` or `builtin:toy`.
    pub prompts: String,
    /// Held-out prompts in the same formats; empty means the built-in eval
    /// prompts with the built-in task, else the last tenth of `prompts`.
    pub eval_prompts: String,
    /// How `{"messages": [...]}` prompt lines become text: `auto` (the
    /// policy tokenizer's `chat_template`), `none` (refused), or a Jinja
    /// file.
    pub chat_template: String,
    /// Evaluate every this many steps (0 disables).
    pub eval_every: usize,
    /// Responses sampled per held-out prompt at each evaluation.
    pub eval_samples: usize,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Stop after this many skipped updates in a row.
    pub max_nonfinite: usize,
    pub device: DeviceSpec,
    /// With `bf16` the policy computes in bfloat16; AdamW keeps float32
    /// master weights and state, and rounds into the policy after each step.
    pub dtype: Dtype,
    /// CPU threads of libtorch (0: libtorch's default).
    pub threads: usize,
    /// Token log-probs of the training forward (with `cuda` also the pair
    /// losses, the reference's sequence log-probs and PPO's GAE).
    pub kernels: KernelBackend,
    /// Keep only each layer's input in the training forward and recompute
    /// the layers in the backward ([C-CHECKPOINTING]): less memory, about
    /// one more forward pass of time.
    pub gradient_checkpointing: bool,
    /// The LM head and its log-probs as one chunked op ([C-FUSED-HEAD]);
    /// `false` materialises the `[.., V]` logits (only `kernels = torch`).
    pub fused_head: bool,
    /// Rows per chunk of the fused head (0: about 2^24 logits a chunk).
    pub head_chunk_rows: usize,
    /// LoRA rank ([C-LORA]); 0 trains every weight of the policy.
    pub lora_r: i64,
    /// LoRA's `alpha` (the adapters' scale is `alpha / r`).
    pub lora_alpha: f64,
    /// Dropout on the adapters' inputs; only 0 for now.
    pub lora_dropout: f64,
    /// The projections that get adapters.
    pub lora_target_modules: LoraModules,
    /// p3o-trlx: the bound `c > 1` on its joint importance weight
    /// ([C-P3O-TRLX]); `inf` leaves it unbounded.
    #[serde(with = "non_finite")]
    pub cliprange_ratio: f64,
    /// p3o-trlx: clip each token's log-prob around its behaviour log-prob.
    pub clip_tokenwise: bool,
    /// p3o-trlx: divide the summed pair losses by the minibatch's response
    /// tokens instead of averaging over pairs.
    pub avg_tokenwise: bool,
    /// GRPO: `group` or `none` ([C-GRPO]).
    pub scale_rewards: ScaleRewards,
    /// GRPO: added to the group's standard deviation.
    pub std_eps: f64,
    /// PPO: discount of GAE.
    pub gamma: f64,
    /// PPO: lambda of GAE.
    pub lam: f64,
    /// PPO: weight of the value loss.
    pub vf_coef: f64,
    /// PPO: clip range of the value around its rollout value.
    pub cliprange_value: f64,
    /// PPO: whiten advantages over each rollout's valid tokens.
    pub whiten_advantages: bool,
    /// PPO: the scores as they are, or over their running std.
    pub reward_scaling: RewardScaling,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            algorithm: Algorithm::P3oV2,
            steps: 100,
            seed: 0,
            lr: 1e-3,
            beta: 0.02,
            epsilon: 0.2,
            batch_size: 16,
            responses_per_prompt: 2,
            epochs: 2,
            minibatch_size: 8,
            grad_accum: 1,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            warmup_steps: 5,
            lr_schedule: LrSchedule::Constant,
            max_new_tokens: 16,
            temperature: 1.0,
            top_k: None,
            top_p: None,
            policy: BUILTIN_MODEL.into(),
            reference: String::new(),
            reward: BUILTIN_REWARD.into(),
            gold_reward: String::new(),
            prompts: BUILTIN_PROMPTS.into(),
            eval_prompts: String::new(),
            chat_template: "auto".into(),
            eval_every: 10,
            eval_samples: 1,
            checkpoint_every: 10,
            max_nonfinite: 3,
            device: DeviceSpec::Cpu,
            dtype: Dtype::F32,
            threads: 2,
            kernels: KernelBackend::Torch,
            gradient_checkpointing: false,
            fused_head: true,
            head_chunk_rows: 0,
            lora_r: 0,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            lora_target_modules: LoraModules::One("all-linear".into()),
            cliprange_ratio: 10.0,
            clip_tokenwise: false,
            avg_tokenwise: false,
            scale_rewards: ScaleRewards::Group,
            std_eps: 0.0,
            gamma: 1.0,
            lam: 0.95,
            vf_coef: 0.5,
            cliprange_value: 0.2,
            whiten_advantages: true,
            reward_scaling: RewardScaling::None,
        }
    }
}

/// Reads a config of type `T` from an optional TOML file and `key=value`
/// overrides (values in TOML syntax; a bare word is taken as a string). An
/// unknown key or a value of the wrong type is an error naming the key.
pub fn load_toml<T: serde::de::DeserializeOwned>(
    file: Option<&Path>,
    sets: &[String],
) -> Result<T, ConfigError> {
    load_toml_over(toml::Table::new(), file, sets)
}

/// The checks that SFT and reward-model configs share: counts of at least
/// one (and at most [`MAX_COUNT`]), a positive finite learning rate,
/// finite non-negative weight decay and gradient-norm clip, a held-out share
/// in [0, 1), a thread count within [`MAX_THREADS`] and a device this
/// machine has.
pub fn check_supervised(s: &Supervised) -> Result<(), ConfigError> {
    let bad = |key: &str, why: String| Err(ConfigError(format!("config key `{key}`: {why}")));
    if let Some((key, _)) = s.counts.iter().find(|(_, v)| *v == 0) {
        return bad(key, "must be at least 1".into());
    }
    if let Some((key, v)) = s.counts.iter().find(|(_, v)| *v > MAX_COUNT) {
        return bad(key, format!("{v} is above the limit of {MAX_COUNT}"));
    }
    if !(s.lr.is_finite() && s.lr > 0.0) {
        return bad("lr", format!("{} must be finite and positive", s.lr));
    }
    for (key, v) in [
        ("weight_decay", s.weight_decay),
        ("max_grad_norm", s.max_grad_norm),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return bad(key, format!("{v} must be finite and >= 0"));
        }
    }
    if !(0.0..1.0).contains(&s.heldout_fraction) {
        return bad(
            "heldout_fraction",
            format!("{} must be in [0, 1)", s.heldout_fraction),
        );
    }
    check_threads(s.threads)?;
    check_device(s.device)
}

/// What [`check_supervised`] checks of an SFT or reward-model config.
pub struct Supervised<'a> {
    /// Counts by config key.
    pub counts: &'a [(&'a str, usize)],
    pub lr: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub heldout_fraction: f64,
    pub threads: usize,
    pub device: DeviceSpec,
}

/// The largest per-step count a config may give (`batch_size`,
/// `minibatch_size`, `epochs`, `eval_samples`, ...).
pub const MAX_COUNT: usize = 1 << 20;

/// The most responses per prompt (`responses_per_prompt`).
pub const MAX_GROUP: usize = 1024;

/// The most steps a training run may ask for.
pub const MAX_STEPS: usize = 1 << 32;

/// The most libtorch CPU threads a config may ask for (0 keeps libtorch's
/// own choice).
pub const MAX_THREADS: usize = 1024;

/// Config key `threads` is at most [`MAX_THREADS`].
pub fn check_threads(threads: usize) -> Result<(), ConfigError> {
    if threads > MAX_THREADS {
        return Err(ConfigError(format!(
            "config key `threads`: {threads} is above the limit of {MAX_THREADS}"
        )));
    }
    Ok(())
}

/// A config's `device` exists on this machine.
pub fn check_device(device: DeviceSpec) -> Result<(), ConfigError> {
    device
        .resolve()
        .map(|_| ())
        .map_err(|why| ConfigError(format!("config key `device`: {why}")))
}

/// serde's "unknown field `x`, expected one of `a`, `b`, ..." names every
/// key, too many for one line: this keeps the closest known key (within two
/// edits) as a suggestion and points to the README for the rest.
fn shorten_unknown_field(message: &str) -> String {
    let Some((head, known)) = message.split_once(", expected one of ") else {
        return message.to_string();
    };
    let Some(field) = head
        .strip_prefix("unknown field `")
        .and_then(|f| f.strip_suffix('`'))
    else {
        return message.to_string();
    };
    let closest = known
        .split(", ")
        .map(|k| k.trim_matches('`'))
        .map(|k| (edit_distance(field, k), k))
        .min();
    match closest {
        Some((d, k)) if d <= 2 => {
            format!("unknown key (did you mean `{k}`? the README lists every key)")
        }
        _ => "unknown key (the README lists every key)".to_string(),
    }
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// A TOML syntax error as one line: the file, the line and column of the
/// error's start, and toml's message (whose own rendering spans several
/// lines).
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let at = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" line {line} column {column}")
        }
        None => String::new(),
    };
    let message = e.message().trim().replace('\n', "; ");
    ConfigError(format!("{}{at}: {message}", path.display()))
}

/// [`load_toml`] with the keys of `base` as defaults under the file's.
pub fn load_toml_over<T: serde::de::DeserializeOwned>(
    mut table: toml::Table,
    file: Option<&Path>,
    sets: &[String],
) -> Result<T, ConfigError> {
    if let Some(p) = file {
        let text =
            std::fs::read_to_string(p).map_err(|e| ConfigError(format!("{}: {e}", p.display())))?;
        let from_file =
            toml::from_str::<toml::Table>(&text).map_err(|e| toml_error(p, &text, &e))?;
        table.extend(from_file);
    }
    for s in sets {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| ConfigError(format!("--set `{s}`: expected key=value")))?;
        let key = key.trim();
        let value = value.trim();
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        table.insert(key.to_string(), parsed);
    }
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let message = shorten_unknown_field(e.into_inner().message());
        if key == "." {
            ConfigError(format!("config: {message}"))
        } else {
            ConfigError(format!("config key `{key}`: {message}"))
        }
    })
}

impl TrainConfig {
    /// Reads an optional TOML file, applies `key=value` overrides and checks
    /// the result.
    pub fn load(file: Option<&Path>, sets: &[String]) -> Result<TrainConfig, ConfigError> {
        let cfg: TrainConfig = load_toml(file, sets)?;
        cfg.check()?;
        Ok(cfg)
    }

    /// The LoRA adapters the policy trains, if `lora_r > 0` (the config is
    /// checked).
    pub fn lora(&self) -> Option<LoraSpec> {
        let targets = LoraTargets::parse(&self.lora_target_modules.names()).ok()?;
        (self.lora_r > 0).then(|| LoraSpec {
            r: self.lora_r,
            alpha: self.lora_alpha,
            targets,
        })
    }

    /// Checks what the types cannot: ranges, and that `device` and
    /// `kernels` name what this machine and build have.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError(format!("config key `{key}`: {why}")));
        for (key, v) in [("gamma", self.gamma), ("lam", self.lam)] {
            if !(0.0..=1.0).contains(&v) {
                return bad(key, format!("{v} must be in [0, 1]"));
            }
        }
        for (key, v) in [
            ("vf_coef", self.vf_coef),
            ("cliprange_value", self.cliprange_value),
            ("std_eps", self.std_eps),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(key, format!("{v} must be finite and >= 0"));
            }
        }
        for (key, v) in [
            ("steps", self.steps),
            ("batch_size", self.batch_size),
            ("epochs", self.epochs),
            ("minibatch_size", self.minibatch_size),
            ("grad_accum", self.grad_accum),
            ("eval_samples", self.eval_samples),
            ("max_nonfinite", self.max_nonfinite),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        // Sizes of one step's tensors and lists: far above any real run,
        // and below what would overflow an allocation.
        for (key, v) in [
            ("batch_size", self.batch_size),
            ("minibatch_size", self.minibatch_size),
            ("grad_accum", self.grad_accum),
            ("epochs", self.epochs),
            ("eval_samples", self.eval_samples),
        ] {
            if v > MAX_COUNT {
                return bad(key, format!("{v} is above the limit of {MAX_COUNT}"));
            }
        }
        if self.algorithm == Algorithm::Ppo {
            if self.responses_per_prompt != 2 {
                return bad(
                    "responses_per_prompt",
                    "`ppo` samples one response per prompt; leave the key out".into(),
                );
            }
        } else if !(2..=MAX_GROUP).contains(&self.responses_per_prompt) {
            return bad(
                "responses_per_prompt",
                format!(
                    "{} must be in 2..={MAX_GROUP} (a group needs two responses to compare)",
                    self.responses_per_prompt
                ),
            );
        }
        if self.batch_size.saturating_mul(self.responses_per_prompt) > MAX_COUNT {
            return bad(
                "responses_per_prompt",
                format!(
                    "{} responses for each of {} prompts is above the limit of {MAX_COUNT} per step",
                    self.responses_per_prompt, self.batch_size
                ),
            );
        }
        if self.lora_r < 0 {
            return bad(
                "lora_r",
                format!("{} must be >= 0 (0: no LoRA)", self.lora_r),
            );
        }
        if self.lora_r > 0 {
            if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
                return bad(
                    "lora_alpha",
                    format!("{} must be finite and > 0", self.lora_alpha),
                );
            }
            if self.lora_dropout != 0.0 {
                return bad(
                    "lora_dropout",
                    format!("{}: only 0 is supported so far", self.lora_dropout),
                );
            }
            if let Err(why) = LoraTargets::parse(&self.lora_target_modules.names()) {
                return bad("lora_target_modules", why);
            }
        }
        if self.cliprange_ratio.is_nan() || self.cliprange_ratio <= 1.0 {
            return bad(
                "cliprange_ratio",
                format!("{} must be above 1 (or `inf`)", self.cliprange_ratio),
            );
        }
        if self.steps > MAX_STEPS {
            return bad(
                "steps",
                format!("{} is above the limit of {MAX_STEPS}", self.steps),
            );
        }
        check_threads(self.threads)?;
        for (key, v) in [
            ("lr", self.lr),
            ("beta", self.beta),
            ("max_grad_norm", self.max_grad_norm),
            ("weight_decay", self.weight_decay),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(key, format!("{v} must be finite and >= 0"));
            }
        }
        if let Some(why) = temperature_problem(self.temperature) {
            return bad("temperature", why);
        }
        // Two responses of a pair drawn greedily (or from one token) are the
        // same response: their reward difference is zero and the pair
        // algorithms would take no step at all.
        if self.algorithm != Algorithm::Ppo {
            if self.temperature == 0.0 {
                return bad(
                    "temperature",
                    format!(
                        "0 (greedy) draws identical responses to every prompt, so `{}` learns nothing; use a positive temperature",
                        self.algorithm.name()
                    ),
                );
            }
            if self.top_k == Some(1) {
                return bad(
                    "top_k",
                    format!(
                        "1 draws identical responses to every prompt, so `{}` learns nothing; use 2 or more, or none",
                        self.algorithm.name()
                    ),
                );
            }
        }
        if self.epsilon.is_nan() || self.epsilon <= 0.0 {
            return bad("epsilon", format!("{} must be positive", self.epsilon));
        }
        if !(1..=MAX_NEW_TOKENS).contains(&self.max_new_tokens) {
            return bad(
                "max_new_tokens",
                format!("{} must be in 1..={MAX_NEW_TOKENS}", self.max_new_tokens),
            );
        }
        if self.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
            return bad("top_p", "must be in (0, 1]".into());
        }
        if let Some(k) = self.top_k.filter(|&k| k < 1) {
            return bad("top_k", format!("{k} must be at least 1"));
        }
        check_device(self.device)?;
        if !self.fused_head && matches!(self.kernels, KernelBackend::Cuda | KernelBackend::CudaHost)
        {
            return bad(
                "fused_head",
                format!(
                    "false needs kernels = torch; `{}` runs its kernels over the fused head's chunks",
                    self.kernels.name()
                ),
            );
        }
        self.kernels.check_against(self.device)
    }
}

impl KernelBackend {
    /// Whether this build runs the backend on `device`; the error names
    /// config key `kernels`.
    pub fn check_against(self, device: DeviceSpec) -> Result<(), ConfigError> {
        let bad = |why: &str| {
            Err(ConfigError(format!(
                "config key `kernels`: `{}` {why}",
                self.name()
            )))
        };
        match self {
            KernelBackend::Torch | KernelBackend::Reference => Ok(()),
            KernelBackend::Cuda | KernelBackend::CudaHost if !cfg!(feature = "cuda") => {
                bad("needs a p3o built with features `cuda` and `torch`")
            }
            KernelBackend::Cuda if device == DeviceSpec::Cpu => {
                bad("needs device = cuda (or cuda:N)")
            }
            KernelBackend::CudaHost if device != DeviceSpec::Cpu => {
                bad("runs the kernels on the CPU; it needs device = cpu")
            }
            KernelBackend::Cuda | KernelBackend::CudaHost => Ok(()),
        }
    }
}

/// A float that may be infinite, as TOML writes it (`inf`) and as JSON,
/// which has no infinity, cannot: there it is the string `"inf"` (or
/// `"-inf"`, `"nan"`), so that a checkpoint's `state.json` reads back the
/// config that wrote it.
pub mod non_finite {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        match *v {
            v if v.is_finite() => s.serialize_f64(v),
            v if v.is_nan() => s.serialize_str("nan"),
            v if v > 0.0 => s.serialize_str("inf"),
            _ => s.serialize_str("-inf"),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Spelled {
        Number(f64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Spelled::deserialize(d)? {
            Spelled::Number(v) => Ok(v),
            Spelled::Text(t) => match t.as_str() {
                "inf" | "+inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                "nan" => Ok(f64::NAN),
                other => Err(serde::de::Error::custom(format!(
                    "`{other}` is not a number (or `inf`)"
                ))),
            },
        }
    }
}
