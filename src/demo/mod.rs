//! `p3o demo`: the whole RLHF pipeline on the built-in toy task
//! ([C-TOY-TASK]): SFT, preference pairs labelled by the gold reward, a
//! Bradley-Terry proxy reward model, then every arm (by default P3O-V1,
//! P3O-V2 on pairs and on groups of four, PPO, online DPO, RLOO and GRPO on
//! groups of four) from the same SFT policy, each also trained on
//! `r + delta(x)`; evaluation, win rates, plots and `report.md`.

pub mod arm;
pub mod config;
pub mod report;
pub mod results;

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

pub use arm::DemoArm;
pub use config::DemoConfig;
pub use results::{DemoResults, RunCurves, ShiftResult};

use crate::reference::shift::RewardShift;
use crate::torch::checkpoint::read_tensors;
use crate::torch::tokenizer::Tokenizer;
use crate::toy::{self, Split};
use crate::train::builtin::TOY_PROMPTS;
use crate::train::error::TrainError;
use crate::train::evaluate::{
    Judges, SampleSpec, compare, eval_prompts, evaluate_policy, load_policy, sample_responses,
};
use crate::train::models::device_of;
use crate::train::reward_model::train_reward_model;
use crate::train::scoring::Reward;
use crate::train::seed::SeedPurpose;
use crate::train::sft::run_sft;
use crate::train::trainer::Trainer;
use crate::train::trainer::metrics::{MetricsLine, read_metrics};

/// One RL run's curves, read back from its metrics.jsonl.
pub(crate) fn read_curves(
    dir: &Path,
    arm: DemoArm,
    shifted: bool,
) -> Result<RunCurves, TrainError> {
    let mut c = RunCurves {
        arm,
        shifted,
        train_reward: Vec::new(),
        eval: Vec::new(),
    };
    for line in read_metrics(&dir.join("metrics.jsonl"))? {
        match line {
            MetricsLine::Step(m) => c.train_reward.push((m.step as f64, m.reward_mean)),
            MetricsLine::Skipped(m) => c.train_reward.push((m.step as f64, f64::NAN)),
            MetricsLine::Eval(m) => c.eval.push((
                m.step as f64,
                m.kl_mean,
                m.reward_mean,
                m.gold_reward_mean.unwrap_or(f64::NAN),
            )),
        }
    }
    Ok(c)
}

/// Largest |a - b| over the tensors of two runs' final policies, over the
/// largest |a|.
fn weight_difference(a: &Path, b: &Path) -> Result<f64, TrainError> {
    let read = |dir: &Path| read_tensors(&dir.join("model.safetensors"), tch::Device::Cpu);
    let (a, b) = (read(a)?, read(b)?);
    let mut names: Vec<&String> = a.keys().collect();
    names.sort();
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for name in names {
        let (x, y) = (
            &a[name],
            b.get(name).ok_or_else(|| {
                TrainError::Input(format!("the shifted run's policy has no tensor `{name}`"))
            })?,
        );
        diff = diff.max((x - y).abs().max().double_value(&[]));
        scale = scale.max(x.abs().max().double_value(&[]));
    }
    Ok(diff / scale.max(f64::MIN_POSITIVE))
}

/// Writes the toy preference pairs: two samples from `policy` per prompt of
/// the preference split, the first chosen with probability
/// `sigma(gold1 - gold2)` ([C-TOY-GOLD]). Returns the share of labels that
/// agree with the sign of the gold difference.
pub(crate) fn write_preferences(
    policy: &Path,
    cfg: &DemoConfig,
    out: &Path,
) -> Result<f64, TrainError> {
    let model = load_policy(policy, device_of(cfg.device, "config key `device`")?)?;
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
        seed: SeedPurpose::PreferenceSamples.of(cfg.seed),
        batch_size: 256,
    };
    let responses = sample_responses(&model, &tokenizer, &ids, &spec)?;
    let body = |r: &[i64]| -> Result<String, TrainError> {
        let r = match r.split_last() {
            Some((&last, b)) if tokenizer.is_eos(last) => b,
            _ => r,
        };
        Ok(tokenizer.decode(r)?)
    };
    let mut rng = ChaCha8Rng::seed_from_u64(SeedPurpose::PreferenceLabels.of(cfg.seed));
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

/// The judges of the toy task's evaluations: the SFT policy in `sft` as
/// the KL reference, the proxy in `rm` and the gold reward.
pub(crate) fn toy_judges(cfg: &DemoConfig, sft: &Path, rm: &Path) -> Result<Judges, TrainError> {
    let device = device_of(cfg.device, "config key `device`")?;
    let reference = load_policy(sft, device)?;
    let tokenizer = Tokenizer::load(sft, &reference.config)?;
    Ok(Judges {
        reference,
        reward: Reward::load(
            &rm.display().to_string(),
            "reward",
            cfg.max_new_tokens,
            device,
        )?,
        gold: Some(Reward::ToyGold),
        tokenizer,
    })
}

/// The sampling of the final evaluation: `eval_samples` per held-out
/// prompt, from the final-evaluation seed.
pub(crate) fn final_spec(cfg: &DemoConfig) -> SampleSpec {
    SampleSpec {
        max_new_tokens: cfg.max_new_tokens,
        temperature: 1.0,
        samples: cfg.eval_samples,
        seed: SeedPurpose::FinalEvaluation.of(cfg.seed),
        batch_size: 256,
    }
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
    for &arm in &cfg.algorithms {
        let tc = cfg.train_config(arm, &sft.model, &rm.model)?;
        let mut dirs = Vec::new();
        for shifted in [false, true].into_iter().take(runs_per_alg) {
            n += 1;
            let name = if shifted {
                format!("{arm}-shifted")
            } else {
                arm.to_string()
            };
            stage(n, stages, &format!("RL: {name}"));
            let dir = out.join("rl").join(&name);
            let _ = std::fs::remove_dir_all(&dir);
            let mut trainer = Trainer::new(tc.clone(), &dir, if shifted { shift } else { None })?;
            trainer.run()?;
            curves.push(read_curves(&dir, arm, shifted)?);
            if !shifted {
                finals.push((arm.to_string(), dir.join("final")));
            }
            dirs.push(dir.join("final"));
            lap(&mut timings, &format!("rl_{name}_s"), &mut t);
        }
        if let [a, b] = dirs.as_slice() {
            let k = curves.len();
            let (u, s) = (&curves[k - 2], &curves[k - 1]);
            let max_reward_difference = u
                .train_reward
                .iter()
                .zip(&s.train_reward)
                .map(|(x, y)| (x.1 - y.1).abs())
                .fold(0.0, f64::max);
            shift_results.push(ShiftResult {
                arm,
                max_reward_difference,
                weight_relative_difference: weight_difference(a, b)?,
            });
        }
    }

    n += 1;
    stage(
        n,
        stages,
        "final evaluation and win rates on held-out prompts",
    );
    let device = device_of(cfg.device, "config key `device`")?;
    let judges = toy_judges(cfg, &sft.model, &rm.model)?;
    let prompts = eval_prompts(TOY_PROMPTS, None)?;
    let spec = final_spec(cfg);
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
