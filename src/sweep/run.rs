//! The sweep's units and their resumption ([C-SWEEP]): a seed's pipeline
//! (SFT, preference pairs, proxy), then one run per arm and KL coefficient,
//! each marked done by one JSON file written last (by rename), so that a
//! killed sweep redoes only the unit it was in.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::analysis::{EvalPoint, Layout, RunRecord, analyse};
use super::config::SweepConfig;
use super::report::write_outputs;
use super::results::{SeedRecord, SweepResults};
use crate::demo::{DemoArm, DemoConfig, final_spec, read_curves, toy_judges, write_preferences};
use crate::run_dir;
use crate::train::builtin::TOY_PROMPTS;
use crate::train::error::TrainError;
use crate::train::evaluate::{Judges, eval_prompts, evaluate_policy, load_policy};
use crate::train::models::device_of;
use crate::train::reward_model::train_reward_model;
use crate::train::sft::run_sft;
use crate::train::trainer::Trainer;

/// The file that holds a sweep's configuration.
pub const CONFIG_FILE: &str = "sweep.toml";

/// Writes `value` as JSON to `path` through a temporary file and a rename,
/// so that `path` exists only complete.
fn write_done<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let tmp = path.with_extension("json.partial");
    std::fs::write(&tmp, serde_json::to_string_pretty(value).expect("JSON"))
        .map_err(|e| TrainError::Input(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::Input(format!("{}: {e}", path.display())))
}

/// A unit's record when its marker exists; a marker that does not parse is
/// an error naming it (it is never overwritten).
fn read_done<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, TrainError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            TrainError::Input(format!(
                "{}: not a finished unit's record ({e}); move it away to redo the unit",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TrainError::Input(format!("{}: {e}", path.display()))),
    }
}

/// Removes what an unfinished unit left in `dir`.
fn clear(dir: &Path) -> Result<(), TrainError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TrainError::Input(format!("{}: {e}", dir.display()))),
    }
}

fn seed_dir(out: &Path, seed: u64) -> PathBuf {
    out.join(format!("seed-{seed}"))
}

/// A run's directory in its seed's (its record is the same path + `.json`).
fn run_dir_of(seed_dir: &Path, beta: f64, arm: DemoArm) -> PathBuf {
    seed_dir.join(format!("beta-{beta}")).join(arm.to_string())
}

/// The stages' config of one seed.
fn stages_of(cfg: &SweepConfig, seed: u64) -> DemoConfig {
    DemoConfig {
        seed,
        ..cfg.stages.clone()
    }
}

/// Claims `out` for `cfg`: a new or empty directory gets `sweep.toml`; one
/// holding a sweep of the same configuration resumes; anything else is
/// refused, naming what differs.
pub fn claim(cfg: &SweepConfig, out: &Path) -> Result<bool, TrainError> {
    let file = out.join(CONFIG_FILE);
    let text = toml::to_string(cfg).expect("the config serialises");
    if file.is_file() {
        let old_text = std::fs::read_to_string(&file)
            .map_err(|e| TrainError::Input(format!("{}: {e}", file.display())))?;
        let old: toml::Table = toml::from_str(&old_text).map_err(|e| {
            TrainError::Input(format!("{}: not a sweep's config ({e})", file.display()))
        })?;
        let new: toml::Table = toml::from_str(&text).expect("the config parses");
        if old != new {
            let mut keys: Vec<String> = Vec::new();
            let flat = |t: &toml::Table| -> Vec<(String, toml::Value)> {
                let mut v = Vec::new();
                for (k, x) in t {
                    match x {
                        toml::Value::Table(inner) => {
                            v.extend(inner.iter().map(|(k2, y)| (format!("{k}.{k2}"), y.clone())))
                        }
                        _ => v.push((k.clone(), x.clone())),
                    }
                }
                v
            };
            let (a, b) = (flat(&old), flat(&new));
            for (k, x) in &a {
                if b.iter().find(|(k2, _)| k2 == k).map(|p| &p.1) != Some(x) {
                    keys.push(k.clone());
                }
            }
            for (k, _) in &b {
                if !a.iter().any(|(k2, _)| k2 == k) {
                    keys.push(k.clone());
                }
            }
            return Err(TrainError::Input(format!(
                "{} holds a sweep with another configuration (it differs in {}); resume it with the same flags or choose another --out",
                out.display(),
                keys.join(", ")
            )));
        }
        return Ok(true);
    }
    run_dir::require_fresh(out, "choose another --out").map_err(TrainError::Input)?;
    std::fs::create_dir_all(out)?;
    std::fs::write(&file, text)
        .map_err(|e| TrainError::Input(format!("{}: {e}", file.display())))?;
    Ok(false)
}

/// The first stages of one seed, or their record when done.
fn prepare_seed(cfg: &DemoConfig, dir: &Path) -> Result<SeedRecord, TrainError> {
    let done = dir.join("pipeline.json");
    if let Some(r) = read_done(&done)? {
        return Ok(r);
    }
    let t = Instant::now();
    for stage in ["sft", "reward_model", "preferences.jsonl"] {
        let p = dir.join(stage);
        if p.is_dir() {
            clear(&p)?;
        } else if p.is_file() {
            std::fs::remove_file(&p)?;
        }
    }
    std::fs::create_dir_all(dir)?;
    let sft = run_sft(&cfg.sft_config(), &dir.join("sft"))?;
    let prefs = dir.join("preferences.jsonl");
    let agreement = write_preferences(&sft.model, cfg, &prefs)?;
    let rm = train_reward_model(
        &cfg.reward_model_config(&sft.model, &prefs),
        &dir.join("reward_model"),
    )?;
    let record = SeedRecord {
        seed: cfg.seed,
        sft,
        preference_label_agreement: agreement,
        reward_model: rm,
        seconds: t.elapsed().as_secs_f64(),
    };
    write_done(&done, &record)?;
    Ok(record)
}

/// One arm at one coefficient on one seed, or its record when done.
fn run_arm(
    cfg: &DemoConfig,
    seed_dir: &Path,
    arm: DemoArm,
    beta: f64,
    judges: &Judges,
) -> Result<RunRecord, TrainError> {
    let dir = run_dir_of(seed_dir, beta, arm);
    let done = dir.with_extension("json");
    if let Some(r) = read_done(&done)? {
        return Ok(r);
    }
    let t = Instant::now();
    clear(&dir)?;
    let sft = seed_dir.join("sft").join("final");
    let rm = seed_dir.join("reward_model").join("final");
    let mut tc = cfg.train_config(arm, &sft, &rm)?;
    tc.beta = beta;
    tc.check()?;
    Trainer::new(tc, &dir, None)?.run()?;
    let curves = read_curves(&dir, arm, false)?;
    let eval = curves
        .eval
        .iter()
        .map(|&(step, kl, proxy, gold)| EvalPoint {
            step: step as usize,
            kl,
            proxy,
            gold,
        })
        .collect();
    let device = device_of(cfg.device, "config key `device`")?;
    let policy = load_policy(&dir.join("final"), device)?;
    let prompts = eval_prompts(TOY_PROMPTS, None)?;
    let e = evaluate_policy(
        &arm.to_string(),
        &policy,
        judges,
        &prompts,
        &final_spec(cfg),
    )?;
    let record = RunRecord {
        seed: cfg.seed,
        beta,
        arm: arm.to_string(),
        eval,
        final_kl: e.kl.mean,
        final_proxy: e.reward_per_prompt,
        final_gold: e.gold_per_prompt.unwrap_or_default(),
        seconds: t.elapsed().as_secs_f64(),
    };
    write_done(&done, &record)?;
    Ok(record)
}

/// The kinds of unit [`Progress`] times apart.
const PIPELINE: usize = 0;
const RUN: usize = 1;

/// A line per unit on standard error, with the time left estimated from
/// the units of each kind run so far in this process.
struct Progress {
    total: usize,
    unit: usize,
    /// Units of each kind not yet finished.
    left: [usize; 2],
    /// Units of each kind run here and their seconds.
    spent: [(usize, f64); 2],
}

impl Progress {
    fn start(&mut self, what: &str, will_run: bool) {
        self.unit += 1;
        let mut eta = 0.0;
        for k in [PIPELINE, RUN] {
            let (n, secs) = self.spent[k];
            if n == 0 && self.left[k] > 0 {
                eta = f64::NAN;
            } else if n > 0 {
                eta += secs / n as f64 * self.left[k] as f64;
            }
        }
        let eta = if eta.is_finite() {
            format!(", about {:.0} min left", eta / 60.0)
        } else {
            String::new()
        };
        eprintln!(
            "[{}/{}] {what}{}{eta}",
            self.unit,
            self.total,
            if will_run { "" } else { ": done before, kept" }
        );
    }

    fn finish(&mut self, kind: usize, ran: bool, since: Instant) {
        self.left[kind] -= 1;
        if ran {
            self.spent[kind].0 += 1;
            self.spent[kind].1 += since.elapsed().as_secs_f64();
        }
    }
}

/// Checks every run's config before anything trains.
fn check_runs(cfg: &SweepConfig) -> Result<(), TrainError> {
    for &arm in &cfg.stages.algorithms {
        for &beta in &cfg.betas {
            let mut tc = cfg
                .stages
                .train_config(arm, Path::new("policy"), Path::new("reward"))?;
            tc.beta = beta;
            tc.check()
                .map_err(|e| TrainError::Input(format!("{} (arm `{arm}`, beta {beta})", e.0)))?;
        }
    }
    Ok(())
}

/// Runs (or resumes) the sweep into `out` and writes its report.
pub fn run_sweep(cfg: &SweepConfig, out: &Path) -> Result<SweepResults, TrainError> {
    cfg.check()?;
    check_runs(cfg)?;
    let resumed = claim(cfg, out)?;
    let seeds = cfg.seed_list();
    let arms = &cfg.stages.algorithms;
    let total = seeds.len() * (1 + cfg.betas.len() * arms.len());
    eprintln!(
        "p3o sweep: {} seeds x {} coefficients x {} arms into {}{}",
        seeds.len(),
        cfg.betas.len(),
        arms.len(),
        out.display(),
        if resumed { " (resuming)" } else { "" }
    );
    let mut progress = Progress {
        total,
        unit: 0,
        left: [seeds.len(), seeds.len() * cfg.betas.len() * arms.len()],
        spent: [(0, 0.0); 2],
    };
    let mut seed_records = Vec::new();
    let mut runs = Vec::new();
    for &seed in &seeds {
        let stages = stages_of(cfg, seed);
        let dir = seed_dir(out, seed);
        let will_run = !dir.join("pipeline.json").is_file();
        progress.start(
            &format!("seed {seed}: SFT, preference pairs, proxy reward model"),
            will_run,
        );
        let t = Instant::now();
        let rec = prepare_seed(&stages, &dir)?;
        progress.finish(PIPELINE, will_run, t);
        eprintln!(
            "      proxy held-out accuracy {:.3}",
            rec.reward_model.heldout_accuracy
        );
        seed_records.push(rec);
        let judges = toy_judges(
            &stages,
            &dir.join("sft").join("final"),
            &dir.join("reward_model").join("final"),
        )?;
        for &beta in &cfg.betas {
            for &arm in arms {
                let will_run = !run_dir_of(&dir, beta, arm).with_extension("json").is_file();
                progress.start(&format!("seed {seed}, beta {beta}: {arm}"), will_run);
                let t = Instant::now();
                runs.push(run_arm(&stages, &dir, arm, beta, &judges)?);
                progress.finish(RUN, will_run, t);
            }
        }
    }
    let arm_names: Vec<String> = arms.iter().map(|a| a.to_string()).collect();
    let analysis = analyse(
        &runs,
        &Layout {
            arms: &arm_names,
            seeds: &seeds,
            betas: &cfg.betas,
            kl_bins: &cfg.kl_bins,
            kl_budgets: &cfg.kl_budgets,
        },
    );
    let results = SweepResults {
        config: cfg.clone(),
        seeds: seed_records,
        runs,
        analysis,
    };
    write_outputs(&results, out)?;
    Ok(results)
}
