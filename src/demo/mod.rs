//! `p3o demo`: the whole RLHF pipeline on the built-in toy task
//! ([C-TOY-TASK]): SFT, preference pairs labelled by the gold reward, a
//! Bradley-Terry proxy reward model, then P3O-V1, P3O-V2, PPO and online DPO
//! from the same SFT policy, each also trained on `r + delta(x)`; evaluation,
//! win rates, plots and `report.md`.

pub mod plots;
pub mod report;

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::reference::shift::RewardShift;
use crate::stats::MeanSe;
use crate::torch::tokenizer::Tokenizer;
use crate::toy::{self, Split};
use crate::train::builtin::{TOY_GOLD_REWARD, TOY_PROMPTS};
use crate::train::config::{ConfigError, TrainConfig, load_toml_over};
use crate::train::evaluate::{
    Comparison, Judges, PolicyEval, SampleSpec, compare, eval_prompts, evaluate_policy,
    load_policy, sample_responses,
};
use crate::train::models::device_of;
use crate::train::reward_model::{RewardModelConfig, RewardModelSummary, train_reward_model};
use crate::train::rollout::Reward;
use crate::train::sft::{SftConfig, SftSummary, run_sft};
use crate::train::trainer::{TrainError, Trainer};

/// Every key of the demo, with its default (the full run); `--quick` starts
/// from [`DemoConfig::quick`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    pub seed: u64,
    /// CPU threads of libtorch.
    pub threads: usize,
    /// `cpu`, `cuda` or `cuda:N` for every stage.
    pub device: String,
    /// Supervised examples, SFT steps and batch.
    pub corpus_size: usize,
    pub sft_steps: usize,
    pub sft_batch_size: usize,
    pub sft_lr: f64,
    /// Preference pairs sampled from the SFT policy (one per prompt).
    pub preference_pairs: usize,
    pub rm_epochs: usize,
    pub rm_lr: f64,
    /// Algorithms of the RL stage.
    pub algorithms: Vec<String>,
    pub rl_steps: usize,
    pub rl_batch_size: usize,
    pub rl_epochs: usize,
    pub rl_minibatch_size: usize,
    pub rl_lr: f64,
    /// KL coefficient of P3O and PPO.
    pub beta: f64,
    /// DPO's beta.
    pub dpo_beta: f64,
    pub epsilon: f64,
    pub max_new_tokens: i64,
    /// Frontier points every this many RL steps.
    pub eval_every: usize,
    /// The reward shift of the invariance experiment (`const:C` or
    /// `random:A[:SEED]`; empty skips it).
    pub reward_shift: String,
    /// Samples per held-out prompt at each frontier point and in the final
    /// evaluation.
    pub eval_samples: usize,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            seed: 0,
            threads: 2,
            device: "cpu".into(),
            corpus_size: 8192,
            sft_steps: 600,
            sft_batch_size: 64,
            sft_lr: 3e-3,
            preference_pairs: 16384,
            rm_epochs: 2,
            rm_lr: 2e-3,
            algorithms: ["p3o-v1", "p3o-v2", "ppo", "dpo"]
                .map(String::from)
                .to_vec(),
            rl_steps: 200,
            rl_batch_size: 16,
            rl_epochs: 2,
            rl_minibatch_size: 8,
            rl_lr: 5e-4,
            beta: 0.05,
            dpo_beta: 0.1,
            epsilon: 0.2,
            max_new_tokens: 24,
            eval_every: 10,
            reward_shift: "random:10:1".into(),
            eval_samples: 4,
        }
    }
}

impl DemoConfig {
    /// The `--quick` defaults: the same pipeline, smaller.
    pub fn quick() -> DemoConfig {
        DemoConfig {
            corpus_size: 4096,
            sft_steps: 200,
            preference_pairs: 4096,
            rm_epochs: 2,
            rl_steps: 40,
            eval_every: 10,
            eval_samples: 1,
            ..DemoConfig::default()
        }
    }

    /// The defaults (full or quick) under a TOML file under `--set`s.
    pub fn load(
        quick: bool,
        file: Option<&Path>,
        sets: &[String],
    ) -> Result<DemoConfig, ConfigError> {
        let base = if quick {
            DemoConfig::quick()
        } else {
            DemoConfig::default()
        };
        let table = toml::Table::try_from(&base).expect("the config serialises");
        let cfg: DemoConfig = load_toml_over(table, file, sets)?;
        if cfg.algorithms.is_empty() {
            return Err(ConfigError(
                "config key `algorithms`: name at least one".into(),
            ));
        }
        for (key, v) in [
            ("corpus_size", cfg.corpus_size),
            ("sft_steps", cfg.sft_steps),
            ("preference_pairs", cfg.preference_pairs),
            ("rl_steps", cfg.rl_steps),
            ("eval_samples", cfg.eval_samples),
        ] {
            if v == 0 {
                return Err(ConfigError(format!(
                    "config key `{key}`: must be at least 1"
                )));
            }
        }
        if !cfg.reward_shift.is_empty() {
            cfg.reward_shift
                .parse::<RewardShift>()
                .map_err(|e| ConfigError(format!("config key `reward_shift`: {e}")))?;
        }
        // Every RL config must be valid before anything runs.
        for alg in &cfg.algorithms {
            cfg.train_config(alg, Path::new("policy"), Path::new("reward"))?;
        }
        Ok(cfg)
    }

    fn sft_config(&self) -> SftConfig {
        SftConfig {
            corpus_size: self.corpus_size,
            steps: self.sft_steps,
            batch_size: self.sft_batch_size,
            lr: self.sft_lr,
            seed: self.seed,
            threads: self.threads,
            device: self.device.clone(),
            ..SftConfig::default()
        }
    }

    fn reward_model_config(&self, base: &Path, data: &Path) -> RewardModelConfig {
        RewardModelConfig {
            base: base.display().to_string(),
            data: data.display().to_string(),
            epochs: self.rm_epochs,
            lr: self.rm_lr,
            seed: self.seed,
            threads: self.threads,
            device: self.device.clone(),
            ..RewardModelConfig::default()
        }
    }

    /// The `p3o train` config of one algorithm's run.
    pub fn train_config(
        &self,
        alg: &str,
        policy: &Path,
        reward: &Path,
    ) -> Result<TrainConfig, ConfigError> {
        let beta = if alg == "dpo" {
            self.dpo_beta
        } else {
            self.beta
        };
        let sets = [
            format!("algorithm = {alg:?}"),
            format!("steps = {}", self.rl_steps),
            format!("seed = {}", self.seed),
            format!("lr = {:e}", self.rl_lr),
            format!("beta = {beta:e}"),
            format!("epsilon = {:e}", self.epsilon),
            format!("batch_size = {}", self.rl_batch_size),
            format!("epochs = {}", self.rl_epochs),
            format!("minibatch_size = {}", self.rl_minibatch_size),
            format!("max_new_tokens = {}", self.max_new_tokens),
            format!("policy = {:?}", policy.display().to_string()),
            format!("reward = {:?}", reward.display().to_string()),
            format!("gold_reward = {TOY_GOLD_REWARD:?}"),
            format!("prompts = {TOY_PROMPTS:?}"),
            format!("eval_every = {}", self.eval_every),
            format!("eval_samples = {}", self.eval_samples),
            "checkpoint_every = 0".to_string(),
            format!("threads = {}", self.threads),
            format!("device = {:?}", self.device),
        ];
        TrainConfig::load(None, &sets)
    }
}

/// One RL run's curves, read back from its metrics.jsonl.
#[derive(Clone, Debug, Serialize)]
pub struct RunCurves {
    pub algorithm: String,
    pub shifted: bool,
    /// (step, train reward_mean) per step.
    pub train_reward: Vec<(f64, f64)>,
    /// Eval points: (step, kl_mean, proxy reward_mean, gold_reward_mean).
    pub eval: Vec<(f64, f64, f64, f64)>,
}

fn read_curves(dir: &Path, algorithm: &str, shifted: bool) -> Result<RunCurves, TrainError> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl"))?;
    let mut c = RunCurves {
        algorithm: algorithm.to_string(),
        shifted,
        train_reward: Vec::new(),
        eval: Vec::new(),
    };
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| TrainError::Input(format!("{}: {e}", dir.display())))?;
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        if v["split"] == "eval" {
            c.eval.push((
                f("step"),
                f("kl_mean"),
                f("reward_mean"),
                f("gold_reward_mean"),
            ));
        } else {
            c.train_reward.push((f("step"), f("reward_mean")));
        }
    }
    Ok(c)
}

/// The reward-shift experiment for one algorithm ([C-THM2], [C-PPO-SHIFT]).
#[derive(Clone, Debug, Serialize)]
pub struct ShiftResult {
    pub algorithm: String,
    /// Largest |difference| of the (unshifted) training rewards per step.
    pub max_reward_difference: f64,
    /// Largest |difference| of the final weights over the largest |weight|.
    pub weight_relative_difference: f64,
}

/// Everything the report shows.
#[derive(Clone, Debug, Serialize)]
pub struct DemoResults {
    pub config: DemoConfig,
    pub sft: SftSummary,
    /// Share of sampled preference pairs whose label agrees with the sign
    /// of the gold difference (ties excluded).
    pub preference_label_agreement: f64,
    pub reward_model: RewardModelSummary,
    pub curves: Vec<RunCurves>,
    /// Final evaluation of the SFT policy and each algorithm's policy.
    pub final_eval: Vec<PolicyEval>,
    pub comparison: Comparison,
    pub shift: Vec<ShiftResult>,
}

/// Largest |a - b| over the entries of two weight lists, over the largest |a|.
fn weight_difference(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)]) -> f64 {
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for ((_, x), (_, y)) in a.iter().zip(b) {
        diff = diff.max((x - y).abs().max().double_value(&[]));
        scale = scale.max(x.abs().max().double_value(&[]));
    }
    diff / scale.max(f64::MIN_POSITIVE)
}

/// Writes the toy preference pairs: two samples from `policy` per prompt of
/// the preference split, the first chosen with probability
/// `sigma(gold1 - gold2)` ([C-TOY-GOLD]). Returns the share of labels that
/// agree with the sign of the gold difference.
fn write_preferences(policy: &Path, cfg: &DemoConfig, out: &Path) -> Result<f64, TrainError> {
    let model = load_policy(policy, device_of(&cfg.device)?)?;
    let tokenizer = Tokenizer::load(policy, &model.config)?;
    // Each prompt of the split once, then again (about 2970 prompts).
    let distinct = toy::prompts(Split::Preferences, cfg.preference_pairs);
    let prompts: Vec<String> = (0..cfg.preference_pairs)
        .map(|i| distinct[i % distinct.len()].clone())
        .collect();
    let ids: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| tokenizer.encode(p))
        .collect::<Result<_, _>>()?;
    let spec = SampleSpec {
        max_new_tokens: cfg.max_new_tokens,
        temperature: 1.0,
        samples: 2,
        seed: cfg.seed ^ 0x9e11,
        batch_size: 256,
    };
    let responses = sample_responses(&model, &tokenizer, &ids, &spec)?;
    let body = |r: &[i64]| -> Result<String, TrainError> {
        let r = match r.split_last() {
            Some((&last, b)) if Some(last) == tokenizer.eos_token_id => b,
            _ => r,
        };
        Ok(tokenizer.decode(r)?)
    };
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x1abe1);
    let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
    let (mut agree, mut decided) = (0usize, 0usize);
    for (k, p) in prompts.iter().enumerate() {
        let y1 = body(&responses[2 * k])?;
        let y2 = body(&responses[2 * k + 1])?;
        let (g1, g2) = (toy::gold_reward(p, &y1), toy::gold_reward(p, &y2));
        let first = rng.random::<f64>() < 1.0 / (1.0 + (g2 - g1).exp());
        if g1 != g2 {
            decided += 1;
            agree += usize::from(first == (g1 > g2));
        }
        let (chosen, rejected, gc, gr) = if first {
            (y1, y2, g1, g2)
        } else {
            (y2, y1, g2, g1)
        };
        writeln!(
            file,
            "{}",
            json!({"prompt": p, "chosen": chosen, "rejected": rejected, "gold_chosen": gc, "gold_rejected": gr})
        )?;
    }
    file.flush()?;
    Ok(agree as f64 / decided.max(1) as f64)
}

/// Prints a stage line on standard error.
fn stage(n: usize, of: usize, what: &str) {
    eprintln!("[{n}/{of}] {what}");
}

/// Runs the pipeline into `out` and writes `out/report.md` with its plots.
pub fn run_demo(cfg: &DemoConfig, out: &Path) -> Result<DemoResults, TrainError> {
    let started = Instant::now();
    let mut timings = serde_json::Map::new();
    let lap = |timings: &mut serde_json::Map<String, serde_json::Value>,
               name: &str,
               since: &mut Instant| {
        timings.insert(name.into(), json!(since.elapsed().as_secs_f64()));
        *since = Instant::now();
    };
    let mut t = Instant::now();
    std::fs::create_dir_all(out)?;
    let shift: Option<RewardShift> = if cfg.reward_shift.is_empty() {
        None
    } else {
        Some(
            cfg.reward_shift
                .parse()
                .map_err(|e| TrainError::Input(format!("{e}")))?,
        )
    };
    let runs_per_alg = if shift.is_some() { 2 } else { 1 };
    let stages = 4 + cfg.algorithms.len() * runs_per_alg;
    eprintln!(
        "p3o demo: seed {}, output {}\n{}",
        cfg.seed,
        out.display(),
        toml::to_string(cfg).expect("the config serialises")
    );

    stage(1, stages, "supervised fine-tuning on the toy corpus");
    let sft = run_sft(&cfg.sft_config(), &out.join("sft"))?;
    eprintln!(
        "      held-out loss {:.3} -> {:.3}",
        sft.initial_heldout_loss, sft.final_heldout_loss
    );
    lap(&mut timings, "sft_s", &mut t);

    stage(
        2,
        stages,
        "preference pairs from the SFT policy, labelled by the gold reward",
    );
    let prefs = out.join("preferences.jsonl");
    let agreement = write_preferences(&sft.model, cfg, &prefs)?;
    lap(&mut timings, "preferences_s", &mut t);

    stage(3, stages, "Bradley-Terry proxy reward model");
    let rm = train_reward_model(
        &cfg.reward_model_config(&sft.model, &prefs),
        &out.join("reward_model"),
    )?;
    eprintln!(
        "      held-out accuracy {:.3} ({} pairs)",
        rm.heldout_accuracy, rm.heldout_pairs
    );
    lap(&mut timings, "reward_model_s", &mut t);

    let mut curves = Vec::new();
    let mut shift_results = Vec::new();
    let mut finals = Vec::new();
    let mut n = 3;
    for alg in &cfg.algorithms {
        let tc = cfg
            .train_config(alg, &sft.model, &rm.model)
            .map_err(|e| TrainError::Input(e.to_string()))?;
        let mut weights = Vec::new();
        for shifted in [false, true].into_iter().take(runs_per_alg) {
            n += 1;
            let name = if shifted {
                format!("{alg}-shifted")
            } else {
                alg.clone()
            };
            stage(n, stages, &format!("RL: {name}"));
            let dir = out.join("rl").join(&name);
            let _ = std::fs::remove_dir_all(&dir);
            let mut trainer = Trainer::new(tc.clone(), &dir, if shifted { shift } else { None })?;
            trainer.run()?;
            weights.push(trainer.policy_weights());
            curves.push(read_curves(&dir, alg, shifted)?);
            if !shifted {
                finals.push((alg.clone(), dir.join("final")));
            }
            lap(&mut timings, &format!("rl_{name}_s"), &mut t);
        }
        if let [a, b] = weights.as_slice() {
            let k = curves.len();
            let (u, s) = (&curves[k - 2], &curves[k - 1]);
            let max_reward_difference = u
                .train_reward
                .iter()
                .zip(&s.train_reward)
                .map(|(x, y)| (x.1 - y.1).abs())
                .fold(0.0, f64::max);
            shift_results.push(ShiftResult {
                algorithm: alg.clone(),
                max_reward_difference,
                weight_relative_difference: weight_difference(a, b),
            });
        }
    }

    n += 1;
    stage(
        n,
        stages,
        "final evaluation and win rates on held-out prompts",
    );
    let device = device_of(&cfg.device)?;
    let reference = load_policy(&sft.model, device)?;
    let tokenizer = Tokenizer::load(&sft.model, &reference.config)?;
    let judges = Judges {
        reference,
        reward: Reward::load(
            &rm.model.display().to_string(),
            "reward",
            cfg.max_new_tokens,
            device,
        )?,
        gold: Some(Reward::ToyGold),
        tokenizer,
    };
    let prompts = eval_prompts(TOY_PROMPTS)?;
    let spec = SampleSpec {
        max_new_tokens: cfg.max_new_tokens,
        temperature: 1.0,
        samples: cfg.eval_samples,
        seed: cfg.seed ^ 0xe7a1,
        batch_size: 256,
    };
    let mut final_eval = vec![evaluate_policy(
        "sft",
        &judges.reference,
        &judges,
        &prompts,
        &spec,
    )?];
    for (name, dir) in &finals {
        let policy = load_policy(dir, device)?;
        final_eval.push(evaluate_policy(name, &policy, &judges, &prompts, &spec)?);
    }
    let comparison = compare(&final_eval);
    lap(&mut timings, "evaluation_s", &mut t);

    let results = DemoResults {
        config: cfg.clone(),
        sft,
        preference_label_agreement: agreement,
        reward_model: rm,
        curves,
        final_eval,
        comparison,
        shift: shift_results,
    };
    report::write_report(&results, out)?;
    lap(&mut timings, "report_s", &mut t);
    timings.insert("total_s".into(), json!(started.elapsed().as_secs_f64()));
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results).expect("JSON"),
    )?;
    std::fs::write(
        out.join("timings.json"),
        serde_json::to_string_pretty(&serde_json::Value::Object(timings)).expect("JSON"),
    )?;
    Ok(results)
}

/// A mean with its standard error, for tables.
pub fn fmt_mean_se(m: &MeanSe) -> String {
    format!("{:.2} ± {:.2}", m.mean, m.se)
}
