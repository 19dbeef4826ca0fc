//! Every model family through the commands that use models, end to end on
//! the tiny HF fixtures: `train` (as policy, reference and reward model),
//! `sft`, `reward-model train`, `eval`, `compare` and `generate`, and the
//! checkpoints they write loading back.
#![cfg(feature = "torch")]

mod common;

use std::path::{Path, PathBuf};

use common::run_p3o as p3o;

fn model(name: &str) -> String {
    format!(
        "{}/tests/fixtures/models/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("families-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ok(o: &std::process::Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: exit {:?}\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The causal-LM fixture of each family other than GPT-NeoX and GPT-2,
/// with a reward-model fixture of another family where there is one.
const POLICIES: [(&str, &str); 6] = [
    ("llama", "qwen2-reward"),
    ("llama-tied-llama3", "gptj-reward"),
    ("mistral", "llama-reward"),
    ("qwen2", "gptj-reward"),
    ("qwen3", "llama-reward"),
    ("gptj", "qwen2-reward"),
];

const PROMPTS: &str = "{\"prompt\": \"the policy samples\"}\n{\"prompt\": \"a reward model\"}\n{\"prompt\": \"0123\"}\n";

/// Two P3O-V2 steps of each family's policy against a reward model of
/// another family (a Llama policy against a Qwen2 reward model among
/// them), with evaluation; the final policy loads back with its tokenizer.
#[test]
fn every_family_trains_against_another_familys_reward_model() {
    for (policy, reward) in POLICIES {
        let dir = tmp(&format!("train-{policy}"));
        std::fs::write(dir.join("prompts.jsonl"), PROMPTS).unwrap();
        let out = dir.join("out");
        let sets = [
            format!("policy={}", model(policy)),
            format!("reward={}", model(reward)),
            format!("prompts={}", dir.join("prompts.jsonl").display()),
            "algorithm=p3o-v2".into(),
            "steps=2".into(),
            "batch_size=2".into(),
            "minibatch_size=1".into(),
            "max_new_tokens=6".into(),
            "eval_every=2".into(),
        ];
        let mut args = vec![
            "train".to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        for s in &sets {
            args.extend(["--set".to_string(), s.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&p3o(&args, ""), &format!("train {policy} with {reward}"));
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let last: serde_json::Value =
            serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
        assert!(
            last["reward_mean"].as_f64().is_some_and(f64::is_finite),
            "{policy}: {last}"
        );
        let reloaded = p3o::torch::LanguageModel::load(
            &out.join("final"),
            p3o::torch::Head::Lm,
            tch::Device::Cpu,
            tch::Kind::Float,
        )
        .unwrap();
        assert_eq!(
            reloaded.config.family(),
            p3o::torch::LanguageModel::load(
                Path::new(&model(policy)),
                p3o::torch::Head::Lm,
                tch::Device::Cpu,
                tch::Kind::Float
            )
            .unwrap()
            .config
            .family()
        );
        assert!(out.join("final/tokenizer.json").is_file());
    }
}

/// SFT on each family, then a reward model trained from the SFT model (a
/// fresh `score` head), then `eval` and `compare` of the SFT model against
/// the base, scored by that reward model, and `generate` and `reward` on
/// the results.
#[test]
fn every_family_runs_sft_reward_model_eval_compare_and_generate() {
    let pairs = "{\"prompt\": \"the policy\", \"response\": \" samples two responses\"}\n{\"prompt\": \"a reward\", \"response\": \" model trained on comparisons\"}\n{\"prompt\": \"the quick\", \"response\": \" brown fox\"}\n";
    let prefs = "{\"prompt\": \"the policy\", \"chosen\": \" samples two\", \"rejected\": \" 0123\"}\n{\"prompt\": \"a reward\", \"chosen\": \" model\", \"rejected\": \" fox\"}\n{\"prompt\": \"the\", \"chosen\": \" quick brown\", \"rejected\": \" lazy\"}\n";
    for (policy, _) in POLICIES {
        let dir = tmp(&format!("pipeline-{policy}"));
        std::fs::write(dir.join("pairs.jsonl"), pairs).unwrap();
        std::fs::write(dir.join("prefs.jsonl"), prefs).unwrap();
        std::fs::write(dir.join("prompts.jsonl"), PROMPTS).unwrap();
        let path = |p: &str| dir.join(p).display().to_string();
        ok(
            &p3o(
                &[
                    "sft",
                    "--out",
                    &path("sft"),
                    "--set",
                    &format!("base={}", model(policy)),
                    "--set",
                    &format!("data={}", path("pairs.jsonl")),
                    "--set",
                    "steps=2",
                    "--set",
                    "batch_size=2",
                ],
                "",
            ),
            &format!("sft {policy}"),
        );
        let sft = path("sft/final");
        ok(
            &p3o(
                &[
                    "reward-model",
                    "train",
                    "--base",
                    &sft,
                    "--data",
                    &path("prefs.jsonl"),
                    "--out",
                    &path("rm"),
                ],
                "",
            ),
            &format!("reward-model train on {policy}"),
        );
        let rm = path("rm/final");
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("rm/final/config.json")).unwrap(),
        )
        .unwrap();
        assert!(
            config["architectures"][0]
                .as_str()
                .unwrap()
                .ends_with("ForSequenceClassification"),
            "{config}"
        );
        for command in ["eval", "compare"] {
            let o = p3o(
                &[
                    command,
                    "--policy",
                    &format!("sft={sft}"),
                    "--policy",
                    &format!("base={}", model(policy)),
                    "--reference",
                    &model(policy),
                    "--reward",
                    &rm,
                    "--prompts",
                    &path("prompts.jsonl"),
                    "--samples",
                    "2",
                    "--max-new-tokens",
                    "4",
                ],
                "",
            );
            ok(&o, &format!("{command} {policy}"));
            assert!(!o.stdout.is_empty(), "{command} {policy}: no output");
        }
        let g = p3o(
            &["generate", "--model", &sft, "--max-new-tokens", "3"],
            "{\"prompt\": \"the policy\"}\n",
        );
        ok(&g, &format!("generate {policy}"));
        let r = p3o(
            &["reward", "--model", &rm],
            "{\"prompt\": \"the policy\", \"response\": \" samples\"}\n",
        );
        ok(&r, &format!("reward {policy}"));
    }
}
