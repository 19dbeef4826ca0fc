//! `p3o train` end to end on the built-in task (CPU): Theorem 2 on whole
//! runs, resume after SIGKILL, and bad configs.
#![cfg(feature = "torch")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use p3o::reference::shift::{RewardScale, RewardShift};
use p3o::torch::checkpoint::read_tensors;
use p3o::train::config::TrainConfig;
use p3o::train::trainer::Trainer;
use p3o::train::trainer::metrics::{MetricsLine, StepMetrics, read_metrics};
use tch::{Device, Kind};

/// The metrics of a training step (not a skipped one).
fn step_line(line: Option<MetricsLine>) -> StepMetrics {
    match line {
        Some(MetricsLine::Step(m)) => m,
        other => panic!("expected a step's metrics, got {other:?}"),
    }
}

fn tmp(name: &str) -> PathBuf {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn small(alg: &str) -> Vec<String> {
    [
        "steps=4",
        "batch_size=4",
        "minibatch_size=2",
        "max_new_tokens=8",
        "eval_every=2",
        "checkpoint_every=2",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("algorithm={alg}")])
    .collect()
}

/// Largest |a - b| / max|a| over all parameters of two runs' final weights
/// (a LoRA run's: its adapters).
fn relative_difference(a: &Path, b: &Path) -> f64 {
    let weights = |d: &Path| {
        let full = d.join("final/model.safetensors");
        let file = if full.exists() {
            full
        } else {
            d.join("final/adapter_model.safetensors")
        };
        read_tensors(&file, Device::Cpu).unwrap()
    };
    let (ta, tb) = (weights(a), weights(b));
    assert_eq!(ta.len(), tb.len());
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for (name, x) in &ta {
        let y = &tb[name];
        diff = diff.max((x - y).abs().max().to_kind(Kind::Double).double_value(&[]));
        scale = scale.max(x.abs().max().to_kind(Kind::Double).double_value(&[]));
    }
    diff / scale
}

fn run(alg: &str, shift: Option<RewardShift>, out: &Path) {
    run_with(&small(alg), shift, None, out);
}

fn run_with(sets: &[String], shift: Option<RewardShift>, scale: Option<RewardScale>, out: &Path) {
    let cfg = TrainConfig::load(None, sets).unwrap();
    let mut t = Trainer::new(cfg, out, shift)
        .unwrap()
        .with_reward_scale(scale);
    t.run().unwrap();
}

/// The settings of a group run: `small(alg)` with four responses per
/// prompt and `extra`.
fn group_run(alg: &str, extra: &[&str]) -> Vec<String> {
    let mut sets = small(alg);
    sets.push("responses_per_prompt=4".into());
    sets.extend(extra.iter().map(|s| s.to_string()));
    sets
}

/// Whether training moved the weights away from a zero-step run's.
fn assert_moved(sets: &[String], trained: &Path, name: &str) {
    let init = tmp(&format!("{name}-zero-steps"));
    let cfg = TrainConfig::load(
        None,
        &[sets.to_vec(), vec!["steps=1".into(), "lr=0".into()]].concat(),
    )
    .unwrap();
    Trainer::new(cfg, &init, None).unwrap().run().unwrap();
    assert!(
        relative_difference(trained, &init) > 1e-4,
        "{name}: the weights did not move"
    );
}

/// Theorem 2 end to end over groups of four: RLOO, GRPO (both scalings),
/// P3O-V2 and p3o-trlx (sequence and token level) end bit for bit where
/// the unshifted run ends.
// spec: C-GROUP-SHIFT C-TRAIN-GROUPS C-RLOO C-GRPO C-P3O-TRLX C-REWARD-SHIFT
#[test]
fn shifted_group_runs_end_with_identical_weights() {
    let shift: RewardShift = "random:100:9".parse().unwrap();
    for (name, alg, extra) in [
        ("rloo", "rloo", &[][..]),
        ("grpo", "grpo", &[][..]),
        ("grpo-none", "grpo", &["scale_rewards=none"][..]),
        ("p3o-v2-g4", "p3o-v2", &[][..]),
        ("p3o-trlx", "p3o-trlx", &[][..]),
        (
            "p3o-trlx-tokens",
            "p3o-trlx",
            &["clip_tokenwise=true", "avg_tokenwise=true"][..],
        ),
    ] {
        let sets = group_run(alg, extra);
        let (a, b) = (
            tmp(&format!("{name}-plain")),
            tmp(&format!("{name}-shifted")),
        );
        run_with(&sets, None, None, &a);
        run_with(&sets, Some(shift), None, &b);
        let d = relative_difference(&a, &b);
        assert!(
            d == 0.0,
            "{name}: relative weight difference {d} under a shift"
        );
        assert_moved(&sets, &a, name);
    }
}

/// A per-prompt positive scale `c(x)` (powers of two, so exact) with a
/// shift: GRPO with `std_eps = 0` ends bit for bit where the plain run
/// ends; P3O-V2 and RLOO, whose updates grow with `c(x)`, do not.
// spec: C-GROUP-SCALE C-TRAIN-GROUPS C-GRPO C-REWARD-SCALE
#[test]
fn scaled_rewards_leave_grpo_alone_and_move_p3o() {
    let shift: RewardShift = "random:100:9".parse().unwrap();
    let scale: RewardScale = "random:0.01:100:4".parse().unwrap();
    for (alg, invariant) in [("grpo", true), ("p3o-v2", false), ("rloo", false)] {
        let sets = group_run(alg, &[]);
        let (a, b) = (
            tmp(&format!("{alg}-unscaled")),
            tmp(&format!("{alg}-scaled")),
        );
        run_with(&sets, None, None, &a);
        run_with(&sets, Some(shift), Some(scale), &b);
        let d = relative_difference(&a, &b);
        println!("{alg}: relative weight difference {d} under {scale:?} and {shift:?}");
        if invariant {
            assert!(
                d == 0.0,
                "{alg}: relative weight difference {d} under a scale"
            );
        } else {
            assert!(
                d > 1e-4,
                "{alg}: relative weight difference {d} under a scale"
            );
        }
    }
}

/// Theorem 2 end to end: a run on r + delta(prompt) ends with the same
/// weights, bit for bit, as the run on r for P3O-V1, P3O-V2 and online DPO.
// spec: C-THM2 C-REWARD-SHIFT
#[test]
fn shifted_runs_end_with_the_same_weights() {
    let shift: RewardShift = "random:100:9".parse().unwrap();
    for alg in ["p3o-v1", "p3o-v2", "dpo"] {
        let (a, b) = (tmp(&format!("{alg}-plain")), tmp(&format!("{alg}-shifted")));
        run(alg, None, &a);
        run(alg, Some(shift), &b);
        let d = relative_difference(&a, &b);
        assert!(d == 0.0, "{alg}: relative weight difference {d}");
        // And training did move the weights.
        let init = tmp(&format!("{alg}-zero-steps"));
        let cfg = TrainConfig::load(
            None,
            &[small(alg), vec!["steps=1".into(), "lr=0".into()]].concat(),
        )
        .unwrap();
        Trainer::new(cfg, &init, None).unwrap().run().unwrap();
        assert!(
            relative_difference(&a, &init) > 1e-4,
            "{alg}: the weights did not move"
        );
    }
}

/// PPO end to end is not invariant: the score enters its advantages and
/// value targets, which the value head must learn, so the same shift sends
/// the run elsewhere from the same seed.
// spec: C-PPO-TOKEN C-PPO-SHIFT
#[test]
fn ppo_shifted_run_ends_with_other_weights() {
    let shift: RewardShift = "random:100:9".parse().unwrap();
    let (a, b) = (tmp("ppo-plain"), tmp("ppo-shifted"));
    run("ppo", None, &a);
    run("ppo", Some(shift), &b);
    let d = relative_difference(&a, &b);
    println!("ppo: relative weight difference {d} under {shift:?}");
    assert!(
        d > 1e-3,
        "ppo: relative weight difference {d} under a shift"
    );
}

fn p3o(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_p3o"));
    c.args(args).stdin(Stdio::null());
    c
}

/// A run killed with SIGKILL after its first checkpoint and resumed ends
/// with exactly the weights of an uninterrupted run (in bf16 too, whose
/// float32 master weights travel in the checkpoint; and with LoRA, whose
/// adapters and their optimizer state do).
#[test]
fn resume_after_sigkill_matches_an_uninterrupted_run() {
    resume_case("p3o-v2", "f32");
    resume_case("ppo", "f32");
    resume_case("p3o-v2", "bf16");
    resume_case("p3o-v2", "lora");
    resume_case("grpo", "lora-bf16");
}

/// `p3o train` of a 6-step run checkpointed every 2 steps into `out`.
fn small_run_args(alg: &str, dtype: &str, out: &Path, resume: bool) -> Vec<String> {
    let mut v = vec![
        "train".to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    for s in [
        "steps=6",
        "batch_size=4",
        "minibatch_size=2",
        "max_new_tokens=8",
        "checkpoint_every=2",
        "eval_every=3",
    ] {
        v.push(format!("--set={s}"));
    }
    v.push(format!("--set=algorithm={alg}"));
    // `lora` and `lora-bf16`: LoRA r = 4 on every projection.
    if let Some(rest) = dtype.strip_prefix("lora") {
        v.push("--set=lora_r=4".into());
        v.push(format!(
            "--set=dtype={}",
            rest.strip_prefix('-').unwrap_or("f32")
        ));
        if alg == "grpo" {
            v.push("--set=responses_per_prompt=4".into());
        }
    } else {
        v.push(format!("--set=dtype={dtype}"));
    }
    if resume {
        v.push("--resume".into());
    }
    v
}

/// Runs `p3o` with `resume_args` (a `--resume` into `cut`) and checks that
/// it ends with exactly the final weights of the uninterrupted run `whole`.
fn resume_to_the_same_weights(resume_args: &[String], whole: &Path, cut: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_p3o"))
        .args(resume_args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{resume_args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        relative_difference(whole, cut),
        0.0,
        "{resume_args:?}: resumed weights differ"
    );
}

fn resume_case(alg: &str, dtype: &str) {
    let args = |out: &Path| small_run_args(alg, dtype, out, false);
    let whole = tmp(&format!("{alg}-{dtype}-whole"));
    let st = p3o(&args(&whole).iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());

    let cut = tmp(&format!("{alg}-{dtype}-cut"));
    let mut child = p3o(&args(&cut).iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !cut.join("checkpoints/step-2/state.json").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    resume_to_the_same_weights(&small_run_args(alg, dtype, &cut, true), &whole, &cut);
    // The metrics hold each step once.
    let text = std::fs::read_to_string(cut.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=6).collect::<Vec<_>>());
}

/// Bad configs and inputs: a clear error and exit status 2 before training.
#[test]
fn bad_configs_are_refused() {
    let dir = tmp("bad");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("bad.toml"),
        "algorithm = \"p3o-v1\"\nlearning_rate = 1e-3\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("prompts.jsonl"),
        "{\"prompt\": \"the cat\"}\n{\"text\": 3}\n",
    )
    .unwrap();
    let out = dir.join("out");
    let cases: Vec<Vec<String>> = vec![
        vec![
            "--config".into(),
            dir.join("bad.toml").display().to_string(),
        ],
        vec!["--set".into(), "algorithm=trpo".into()],
        vec!["--set".into(), "steps=0".into()],
        vec!["--set".into(), "lr=\"fast\"".into()],
        vec!["--set".into(), "epsilon=-1".into()],
        vec![
            "--set".into(),
            format!("prompts={}", dir.join("prompts.jsonl").display()),
        ],
        vec!["--set".into(), "policy=/nonexistent".into()],
        vec!["--set".into(), "reward_scaling=weird".into()],
        vec!["--set".into(), "kernels=fast".into()],
        vec!["--set".into(), "kernels=cuda".into()],
        vec!["--set".into(), "device=cuda:7".into()],
        vec!["--set".into(), "device=gpu".into()],
        vec!["--set".into(), "dtype=f64".into()],
        vec!["--set".into(), "lr_schedule=step".into()],
        vec!["--set".into(), "responses_per_prompt=1".into()],
        vec![
            "--set".into(),
            "algorithm=ppo".into(),
            "--set".into(),
            "responses_per_prompt=4".into(),
        ],
        vec!["--set".into(), "cliprange_ratio=1".into()],
        vec!["--set".into(), "scale_rewards=mean".into()],
        vec!["--set".into(), "std_eps=-1".into()],
        vec!["--reward-scale".into(), "random:3:3.5".into()],
        vec!["--set".into(), "lora_r=-1".into()],
        vec![
            "--set".into(),
            "lora_r=4".into(),
            "--set".into(),
            "lora_dropout=0.1".into(),
        ],
        vec![
            "--set".into(),
            "lora_r=4".into(),
            "--set".into(),
            "lora_alpha=0".into(),
        ],
        vec![
            "--set".into(),
            "lora_r=4".into(),
            "--set".into(),
            "lora_target_modules=\" , \"".into(),
        ],
        vec![
            "--set".into(),
            "lora_r=4".into(),
            "--set".into(),
            "lora_target_modules=[\"all-linear\", \"q_proj\"]".into(),
        ],
        vec!["--reward-scale".into(), "const:2".into()],
    ];
    let mut report = String::new();
    for extra in cases {
        let mut args = vec![
            "train".to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        args.extend(extra);
        let o: Output = p3o(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let err = without_device_count(
            &String::from_utf8_lossy(&o.stderr).replace(&dir.display().to_string(), "$DIR"),
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        report.push_str(&err);
        assert!(
            !out.join("metrics.jsonl").exists(),
            "training started on a bad config"
        );
    }
    insta::assert_snapshot!(report);
}

/// `text` with the number of CUDA devices this machine has replaced by `N`,
/// so that a snapshot holds on any machine.
fn without_device_count(text: &str) -> String {
    let marker = "this machine has ";
    match text.find(marker) {
        Some(i) => {
            let rest = &text[i + marker.len()..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            format!(
                "{}N{}",
                &text[..i + marker.len()],
                without_device_count(&rest[digits..])
            )
        }
        None => text.to_string(),
    }
}

/// Non-finite rewards skip the update, are counted in the metrics, and stop
/// the run with a clear error after `max_nonfinite` in a row.
#[test]
fn nonfinite_rewards_stop_the_run() {
    let out = tmp("nan");
    let o = p3o(&[
        "train",
        "--out",
        &out.display().to_string(),
        "--set=reward=builtin:nan",
        "--set=max_nonfinite=2",
        "--set=steps=5",
        "--set=batch_size=2",
        "--set=max_new_tokens=4",
    ])
    .output()
    .unwrap();
    // A failure at run time: exit status 1, one line.
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("stopped at step 2") && err.contains("non-finite"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    // The starting evaluation, then the one skipped step written before the stop.
    let train: Vec<&str> = lines
        .lines()
        .filter(|l| l.contains("\"split\":\"train\""))
        .collect();
    assert_eq!(train.len(), 1, "{lines}");
    assert!(train[0].contains("non-finite reward"));
    assert_eq!(lines.lines().count(), 2, "{lines}");
}

/// bfloat16 training runs (weights bf16, their master copies and the
/// optimizer state float32) and its metrics stay finite.
#[test]
fn bf16_training_runs_on_cpu() {
    let out = tmp("bf16");
    let cfg = TrainConfig::load(
        None,
        &[small("p3o-v1"), vec!["dtype=bf16".into(), "steps=2".into()]].concat(),
    )
    .unwrap();
    let last = step_line(Trainer::new(cfg, &out, None).unwrap().run().unwrap());
    assert!(last.loss.is_finite(), "{last:?}");
    assert!(out.join("final/model.safetensors").exists());
}

/// The prompt formats: plain, TL;DR (`prompt` + `label`) and Anthropic HH.
#[test]
fn prompt_formats() {
    let dir = tmp("formats");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("p.jsonl");
    std::fs::write(
        &f,
        "{\"prompt\": \"plain\"}\n\n{\"prompt\": \"SUBREDDIT: r/x\\nTL;DR:\", \"label\": \" a summary\"}\n{\"chosen\": \"\\n\\nHuman: hi\\n\\nAssistant: hello\\n\\nHuman: and?\\n\\nAssistant: more\", \"rejected\": \"x\"}\n",
    )
    .unwrap();
    let got = p3o::train::data::load_prompts(&f, None).unwrap();
    assert_eq!(
        got,
        vec![
            "plain",
            "SUBREDDIT: r/x\nTL;DR:",
            "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant:"
        ]
    );
    std::fs::write(
        &f,
        "{\"prompt\": \"ok\"}\n{\"chosen\": \"no assistant turn\"}\n",
    )
    .unwrap();
    let e = p3o::train::data::load_prompts(&f, None).unwrap_err();
    assert!(e.contains("line 2") && e.contains("Assistant"), "{e}");
}

/// HF directories as policy, reference and reward model, prompts from a
/// file: a short run trains and writes an HF checkpoint that loads back.
#[test]
fn hf_policy_and_reward_model() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let dir = tmp("hf");
    std::fs::create_dir_all(&dir).unwrap();
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"the policy samples\"}\n{\"prompt\": \"a reward model\"}\n{\"prompt\": \"0123\"}\n").unwrap();
    let sets: Vec<String> = vec![
        format!("policy={}", fx.join("neox-parallel").display()),
        format!("reference={}", fx.join("neox-sharded").display()),
        format!("reward={}", fx.join("neox-reward").display()),
        format!("prompts={}", prompts.display()),
        "steps=2".into(),
        "batch_size=2".into(),
        "minibatch_size=1".into(),
        "max_new_tokens=6".into(),
        "eval_every=1".into(),
    ];
    let out = dir.join("out");
    let cfg = TrainConfig::load(None, &sets).unwrap();
    let last = step_line(Trainer::new(cfg, &out, None).unwrap().run().unwrap());
    assert!(last.reward_mean.is_finite(), "{last:?}");
    // The reference is the same weights (sharded copy), so the first step's
    // KL is zero up to rounding.
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(first["kl_mean"].as_f64().unwrap().abs() < 1e-4, "{first}");
    let reloaded = p3o::torch::LanguageModel::load(
        &out.join("final"),
        p3o::torch::Head::Lm,
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    assert_eq!(reloaded.config.vocab_size(), 320);
    assert!(out.join("final/tokenizer.json").exists());
}

/// The behaviour log-probs come from the sampling pass (KV cache) and the
/// new ones from the training forward: with lr 0 the policy never moves, so
/// every ratio must be 1 up to float32 rounding, and nothing is clipped.
#[test]
fn behaviour_logprobs_from_sampling_match_the_training_forward() {
    for alg in ["p3o-v1", "dpo", "ppo"] {
        let out = tmp(&format!("ratio-{alg}"));
        let mut sets = small(alg);
        sets.extend(["lr=0".into(), "steps=2".into(), "epochs=2".into()]);
        let cfg = TrainConfig::load(None, &sets).unwrap();
        let mut t = Trainer::new(cfg, &out, None).unwrap();
        for _ in 0..2 {
            let line = step_line(Some(t.step_once().unwrap()));
            let ratio = line.ratio_mean;
            assert!((ratio - 1.0).abs() < 1e-5, "{alg}: ratio_mean {ratio}");
            assert_eq!(line.clip_fraction, 0.0, "{alg}");
            // The sampled responses are not empty, so the check is not vacuous.
            assert!(line.response_length > 0.0);
        }
    }
}

/// `state.json` reads back the config that wrote it, an unbounded clip
/// (`epsilon = inf`, which JSON cannot write as a number) included.
#[test]
fn checkpoint_state_round_trips_an_unbounded_clip() {
    use p3o::train::trainer::state::CheckpointState;
    let config = TrainConfig::load(None, &["epsilon=inf".to_string()]).unwrap();
    assert_eq!(config.epsilon, f64::INFINITY);
    let state = CheckpointState {
        step: 3,
        optimizer_step: 6,
        nonfinite_in_row: 0,
        nonfinite_total: 1,
        score_stats: [2.0, 0.5, 0.25],
        config,
    };
    let dir = tmp("state");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.json");
    state.write(&path).unwrap();
    assert_eq!(CheckpointState::read(&path).unwrap(), state);
}

/// Resuming drops the metrics lines written after the checkpoint and a last
/// line that a kill cut short, and continues to the same number of lines as
/// an uninterrupted run.
#[test]
fn resume_drops_lines_after_the_checkpoint_and_a_torn_last_line() {
    // `p3o train` on the small config into `out`, with more flags.
    let train = |out: &Path, more: &[&str]| {
        let mut args = vec![
            "train".to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        for s in small("p3o-v2") {
            args.extend(["--set".to_string(), s]);
        }
        args.extend(more.iter().map(|s| s.to_string()));
        let o = p3o(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let out = tmp("torn");
    train(&out, &["--set", "steps=2"]);
    let metrics = out.join("metrics.jsonl");
    let before = std::fs::read_to_string(&metrics).unwrap();
    // A line of step 3 that the checkpoint at step 2 does not cover, then a
    // torn one.
    let later = before
        .lines()
        .last()
        .unwrap()
        .replacen("\"step\":2", "\"step\":3", 1);
    std::fs::write(&metrics, format!("{before}{later}\n{{\"step\":4,\"algor")).unwrap();
    train(&out, &["--resume"]);
    let after = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        after.starts_with(&before),
        "the lines up to the checkpoint are kept"
    );
    // Every line is whole again.
    read_metrics(&metrics).unwrap();
    let whole = tmp("torn-whole");
    train(&whole, &[]);
    let want = std::fs::read_to_string(whole.join("metrics.jsonl")).unwrap();
    assert_eq!(after.lines().count(), want.lines().count(), "{after}");
}

/// The train lines of a metrics file without their timings (which differ
/// between any two runs), and its eval lines, in order.
fn metrics_without_timings(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let m = v.as_object_mut().unwrap();
            m.retain(|k, _| !k.starts_with("time_") && k != "samples_per_s");
            v
        })
        .collect()
}

/// What a kill may leave: complete checkpoints (a `state.json` beside every
/// file of the checkpoint), a `final/` that is whole when it is there,
/// metrics lines that all parse but perhaps the last, and otherwise only
/// temporary names.
fn assert_nothing_half_written(dir: &Path, when: &str) {
    let known = [
        "metrics.jsonl",
        "checkpoints",
        "final",
        ".metrics.jsonl.tmp",
        ".final.tmp",
        ".final.old",
    ];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(known.contains(&name.as_str()), "{when}: unexpected {name}");
    }
    let whole = |d: &Path, files: &[&str]| {
        for f in files {
            assert!(d.join(f).is_file(), "{when}: {} lacks {f}", d.display());
        }
    };
    for e in std::fs::read_dir(dir.join("checkpoints"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("step-") {
            whole(
                &e.path(),
                &[
                    "state.json",
                    "config.json",
                    "model.safetensors",
                    "optimizer.safetensors",
                    "tokenizer.json",
                ],
            );
        } else {
            assert!(
                name.starts_with(".step-") && name.ends_with(".tmp"),
                "{when}: {name}"
            );
        }
    }
    if dir.join("final").exists() {
        whole(
            &dir.join("final"),
            &["config.json", "model.safetensors", "tokenizer.json"],
        );
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("metrics.jsonl")) {
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let parses = serde_json::from_str::<serde_json::Value>(l).is_ok();
            assert!(
                parses || i + 1 == lines.len(),
                "{when}: metrics line {} is torn",
                i + 1
            );
        }
    }
}

/// SIGKILL at random moments: each of several runs is killed up to four
/// times at seeded random points of its uninterrupted duration, checked for
/// half-written files after each kill, resumed each time, and at the end
/// has exactly the weights and the metrics (timings aside) of the
/// uninterrupted run.
#[test]
fn random_sigkills_then_resume_match_an_uninterrupted_run() {
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut uniform = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    for (alg, dtype) in [("p3o-v1", "f32"), ("ppo", "bf16"), ("dpo", "f32")] {
        let args = |out: &Path, resume: bool| small_run_args(alg, dtype, out, resume);
        let whole = tmp(&format!("kills-{alg}-whole"));
        let start = Instant::now();
        let st = Command::new(env!("CARGO_BIN_EXE_p3o"))
            .args(args(&whole, false))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        let duration = start.elapsed().as_secs_f64();

        let cut = tmp(&format!("kills-{alg}-cut"));
        for kill in 0..4 {
            let mut child = Command::new(env!("CARGO_BIN_EXE_p3o"))
                .args(args(&cut, kill > 0))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_secs_f64(uniform() * duration));
            let _ = child.kill(); // SIGKILL (or nothing, if it had finished)
            child.wait().unwrap();
            assert_nothing_half_written(&cut, &format!("{alg} after kill {kill}"));
        }
        resume_to_the_same_weights(&args(&cut, true), &whole, &cut);
        assert_eq!(
            metrics_without_timings(&whole),
            metrics_without_timings(&cut),
            "{alg}: resumed metrics differ"
        );
    }
}

/// `policy = "random:PATH"` builds the shape a config file describes with
/// weights drawn from the run's seed: the same seed gives the same weights,
/// another seed others; matrices have the config's `initializer_range` as
/// their spread, biases are 0 and norm scales 1; the tokenizer beside the
/// config goes with it (the built-in character tokenizer where there is
/// none), and a run from it saves a checkpoint that loads as HF layout.
#[test]
fn random_policies_from_a_config_alone() {
    use p3o::torch::config::ModelConfig;
    use p3o::torch::{Head, LanguageModel};
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let config = |name: &str| ModelConfig::load(&fx.join(name)).unwrap();
    let weights = |m: &LanguageModel| {
        let mut v: Vec<(String, tch::Tensor)> = m.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    for name in ["llama", "gpt2", "neox-parallel"] {
        let a = LanguageModel::random(config(name), Head::Lm, Device::Cpu, 7).unwrap();
        let b = LanguageModel::random(config(name), Head::Lm, Device::Cpu, 7).unwrap();
        let c = LanguageModel::random(config(name), Head::Lm, Device::Cpu, 8).unwrap();
        let std = config(name).raw["initializer_range"]
            .as_f64()
            .unwrap_or(0.02);
        for (((n, x), (_, y)), (_, z)) in weights(&a).iter().zip(weights(&b)).zip(weights(&c)) {
            assert!(x.equal(&y), "{name} {n}: one seed, other weights");
            if x.dim() >= 2 {
                assert!(!x.equal(&z), "{name} {n}: two seeds, one weight");
                // The sample spread of N entries is within 5 standard errors
                // (std / sqrt(2 N)) of std.
                let s = x.std(true).double_value(&[]);
                let se = std / (2.0 * x.numel() as f64).sqrt();
                assert!(
                    (s - std).abs() <= 5.0 * se,
                    "{name} {n}: spread {s}, not {std}"
                );
            } else {
                let v = Vec::<f32>::try_from(&x.reshape([-1])).unwrap();
                let constant = v.iter().all(|&e| e == 0.0) || v.iter().all(|&e| e == 1.0);
                assert!(constant, "{name} {n}: a bias or norm scale was drawn");
            }
        }
    }
    // A run: the fixture's directory form (its tokenizer comes along) and
    // a config file alone elsewhere (the built-in tokenizer).
    let dir = tmp("random-policy");
    std::fs::create_dir_all(&dir).unwrap();
    let lone = dir.join("shape.json");
    std::fs::copy(fx.join("neox-parallel/config.json"), &lone).unwrap();
    for (what, spec, tokenizer) in [
        (
            "directory",
            fx.join("llama").display().to_string(),
            Some(fx.join("llama/tokenizer.json")),
        ),
        ("file", lone.display().to_string(), None),
    ] {
        let out = dir.join(what);
        let sets: Vec<String> = [
            format!("policy=random:{spec}"),
            "steps=1".into(),
            "batch_size=2".into(),
            "minibatch_size=1".into(),
            "max_new_tokens=4".into(),
            "eval_every=0".into(),
            "checkpoint_every=0".into(),
        ]
        .to_vec();
        let cfg = TrainConfig::load(None, &sets).unwrap();
        let last = step_line(Trainer::new(cfg, &out, None).unwrap().run().unwrap());
        // The reference is drawn from the same seed: the first KL is 0.
        assert!(last.kl_mean.abs() < 1e-4, "{what}: {last:?}");
        let saved = std::fs::read(out.join("final/tokenizer.json")).unwrap();
        let expected = match &tokenizer {
            Some(path) => std::fs::read(path).unwrap(),
            None => p3o::train::builtin::tokenizer_json().into_bytes(),
        };
        assert_eq!(saved, expected, "{what}: the tokenizer that went with it");
        LanguageModel::load(&out.join("final"), Head::Lm, Device::Cpu, Kind::Float).unwrap();
    }
    // With the character tokenizer, its end of text (id 0) ends responses,
    // not the config's id of another vocabulary.
    let lone_spec = format!("random:{}", lone.display());
    let mut foreign = config("neox-parallel");
    foreign.eos_token_ids = vec![5];
    foreign.eos_token_id = Some(5);
    let tok = p3o::train::models::tokenizer_of(&lone_spec, &foreign).unwrap();
    assert_eq!(tok.eos_token_ids, vec![0]);
    // A random reference without a tokenizer of its own is no vocabulary
    // clash for an HF policy of its vocab_size.
    let sets: Vec<String> = [
        format!("policy={}", fx.join("neox-parallel").display()),
        format!("reference={lone_spec}"),
        "steps=1".into(),
        "batch_size=2".into(),
        "minibatch_size=1".into(),
        "max_new_tokens=4".into(),
        "eval_every=0".into(),
        "checkpoint_every=0".into(),
    ]
    .to_vec();
    let cfg = TrainConfig::load(None, &sets).unwrap();
    Trainer::new(cfg, &dir.join("random-reference"), None)
        .unwrap()
        .run()
        .unwrap();
    // A missing file is an input error naming it.
    let cfg = TrainConfig::load(
        None,
        &[format!("policy=random:{}", dir.join("none.json").display())],
    )
    .unwrap();
    let err = Trainer::new(cfg, &dir.join("missing"), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("none.json"), "{err}");
}

/// `gradient_checkpointing = true` trains with the plain pass's losses and
/// gradient norms (lr 0, so that both runs see the same policy at every
/// step): P3O-V2 on pairs, GRPO on groups of four, p3o-trlx at the token
/// level and PPO (whose value head reads the recomputed layers too), with
/// gradient accumulation, with the float64 kernels' own backward and with
/// LoRA (frozen embeddings, adapters in the recomputed layers); and in
/// bfloat16, whose rounding leaves the norms within 1 %.
// spec: C-CHECKPOINTING
#[test]
fn gradient_checkpointing_gives_the_plain_gradients() {
    for (alg, extra, tol) in [
        ("p3o-v2", &[][..], 1e-5),
        (
            "grpo",
            &["responses_per_prompt=4", "grad_accum=2"][..],
            1e-5,
        ),
        ("p3o-trlx", &["clip_tokenwise=true"][..], 1e-5),
        ("ppo", &[][..], 1e-5),
        ("p3o-v2", &["kernels=reference"][..], 1e-5),
        ("p3o-v2", &["lora_r=4"][..], 1e-5),
        ("p3o-v2", &["dtype=bf16"][..], 1e-2),
    ] {
        let run = |checkpointing: bool| {
            let sets: Vec<String> = [
                format!("algorithm={alg}"),
                "steps=2".into(),
                "batch_size=4".into(),
                "minibatch_size=2".into(),
                "max_new_tokens=8".into(),
                "eval_every=0".into(),
                "checkpoint_every=0".into(),
                "lr=0".into(),
                format!("gradient_checkpointing={checkpointing}"),
            ]
            .into_iter()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect();
            let out = tmp(&format!(
                "checkpointing-{alg}-{}-{checkpointing}",
                extra.join("-").replace('=', "_")
            ));
            let cfg = TrainConfig::load(None, &sets).unwrap();
            Trainer::new(cfg, &out, None).unwrap().run().unwrap();
            read_metrics(&out.join("metrics.jsonl"))
                .unwrap()
                .into_iter()
                .filter_map(|l| match l {
                    MetricsLine::Step(m) => Some((m.loss, m.grad_norm)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let (plain, checkpointed) = (run(false), run(true));
        assert_eq!(plain.len(), 2, "{alg}");
        for ((l, g), (lc, gc)) in plain.iter().zip(&checkpointed) {
            assert!(*g > 0.0, "{alg}: no gradient");
            assert!(
                (l - lc).abs() <= tol * (1.0 + l.abs()),
                "{alg}: loss {l} vs {lc}"
            );
            assert!(
                (g - gc).abs() <= tol * g,
                "{alg}: gradient norm {g} vs {gc}"
            );
        }
    }
}

/// A LoRA run ([C-LORA]): only the adapters train (the base weights end as
/// they began, AdamW holds state for the adapters alone), the reference is
/// the base model (the first step's KL is 0, later ones are not), `final`
/// holds a PEFT adapter that continues as `policy`, and merged into its
/// base it gives the adapter model's logits.
// spec: C-LORA
#[test]
fn lora_runs_train_the_adapters_alone() {
    use p3o::torch::peft::read_adapter_config;
    use p3o::torch::{Head, LanguageModel};
    let dir = tmp("lora");
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama");
    let prompts = dir.join("prompts.jsonl");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        &prompts,
        "{\"prompt\": \"the policy samples\"}\n{\"prompt\": \"a reward\"}\n",
    )
    .unwrap();
    let sets = |extra: &[String]| -> Vec<String> {
        [
            format!("policy={}", fx.display()),
            format!("prompts={}", prompts.display()),
            "steps=3".into(),
            "batch_size=2".into(),
            "minibatch_size=1".into(),
            "max_new_tokens=6".into(),
            "eval_every=0".into(),
            "checkpoint_every=0".into(),
            "lr=0.05".into(),
        ]
        .into_iter()
        .chain(extra.iter().cloned())
        .collect()
    };
    let out = dir.join("run");
    let cfg = TrainConfig::load(
        None,
        &sets(&[
            "lora_r=4".into(),
            "lora_target_modules=q_proj,v_proj".into(),
        ]),
    )
    .unwrap();
    let mut t = Trainer::new(cfg, &out, None).unwrap();
    let before = t.policy_weights();
    t.run().unwrap();
    for ((n, a), (_, b)) in before.iter().zip(t.policy_weights()) {
        assert!(a.equal(&b), "base weight {n} moved");
    }
    let lines = read_metrics(&out.join("metrics.jsonl")).unwrap();
    let kl: Vec<f64> = lines
        .iter()
        .filter_map(|l| match l {
            MetricsLine::Step(m) => Some(m.kl_mean),
            _ => None,
        })
        .collect();
    assert!(kl[0].abs() < 1e-5 && kl[2].abs() > 1e-5, "{kl:?}");
    let final_dir = out.join("final");
    assert!(!final_dir.join("model.safetensors").exists());
    let (spec, base) = read_adapter_config(&final_dir).unwrap();
    assert_eq!(spec.r, 4);
    assert_eq!(base.unwrap(), fx);
    // The adapter moved, and merging it gives its logits.
    let model =
        LanguageModel::load_with_lora(&fx, Head::Lm, Device::Cpu, Kind::Float, spec, 0).unwrap();
    model.load_adapters(&final_dir).unwrap();
    let moved = model
        .lora
        .var_store()
        .unwrap()
        .variables()
        .into_iter()
        .filter(|(n, _)| n.ends_with("lora_B.weight"))
        .any(|(_, b)| b.abs().max().double_value(&[]) > 0.0);
    assert!(moved, "the adapters did not train");
    // `p3o lora merge` writes one HF checkpoint with the adapter model's
    // logits, and never over an existing directory.
    let merged = dir.join("merged");
    let merge = |out: &Path| {
        p3o(&[
            "lora",
            "merge",
            "--adapter",
            &final_dir.display().to_string(),
            "--out",
            &out.display().to_string(),
        ])
        .output()
        .unwrap()
    };
    let o = merge(&merged);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = merge(&merged);
    assert_eq!(o.status.code(), Some(2), "merged over an existing --out");
    let plain = LanguageModel::load(&merged, Head::Lm, Device::Cpu, Kind::Float).unwrap();
    let ids = [3i64, 9, 27, 4, 11];
    let (a, b) = (common::logits(&model, &ids), common::logits(&plain, &ids));
    let diff = (&a - &b).abs().max().double_value(&[]);
    assert!(
        diff <= 1e-5 * a.abs().max().double_value(&[]).max(1.0),
        "merged logits differ by {diff:e}"
    );
    assert!(merged.join("tokenizer.json").exists());
    // SFT, which saves full weights, refuses an adapter as its base.
    let sft_out = dir.join("sft").display().to_string();
    let base = format!("base=\"{}\"", final_dir.display());
    let o = p3o(&["sft", "--out", &sft_out, "--set", &base])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("LoRA adapter directory"));
    // The adapter continues as a policy (its own spec; other lora_* keys
    // that disagree are refused).
    let cfg = TrainConfig::load(
        None,
        &[
            format!("policy={}", final_dir.display()),
            "steps=1".into(),
            "batch_size=2".into(),
            "minibatch_size=1".into(),
            "max_new_tokens=4".into(),
            "eval_every=0".into(),
            "checkpoint_every=0".into(),
            format!("prompts={}", prompts.display()),
        ],
    )
    .unwrap();
    Trainer::new(cfg, &dir.join("continued"), None)
        .unwrap()
        .run()
        .unwrap();
    let cfg = TrainConfig::load(
        None,
        &[format!("policy={}", final_dir.display()), "lora_r=8".into()],
    )
    .unwrap();
    let err = Trainer::new(cfg, &dir.join("clash"), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("r = 4") && err.contains("lora_r"), "{err}");
}
