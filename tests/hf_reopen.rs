//! Checkpoints that p3o writes reopen in HF transformers with the logits
//! and rewards p3o computes from them, for every family; and the older
//! config spellings that Hub checkpoints carry (top-level `rope_theta` /
//! `rope_scaling`, GPT-NeoX's `rotary_pct` / `rotary_emb_base`) give the
//! same model as transformers 5's `rope_parameters`, in p3o and in
//! transformers.
//!
//! The transformers side runs tests/fixtures/check_saved.py with the
//! `python3` on PATH (scripts/torch-env.sh puts the virtual environment of
//! scripts/setup-torch.sh first, which has transformers): a missing
//! transformers fails the test, it is not skipped.
#![cfg(feature = "torch")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use p3o::torch::reward::rewards;
use p3o::torch::{Head, LanguageModel};
use p3o::train::reward_model::reward_model_from;
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hf-reopen-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string(v).unwrap()).unwrap();
}

const PROMPTS: [&[i64]; 3] = [
    &[5, 17, 42, 99, 3],
    &[250, 1, 1, 7],
    &[
        9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11, 300, 12, 13, 14, 15, 16, 17, 18, 19,
    ],
];

fn logits_json(model: &LanguageModel) -> Value {
    let blocks: Vec<Vec<Vec<f32>>> = PROMPTS
        .iter()
        .map(|p| Vec::<Vec<f32>>::try_from(common::logits(model, p)).unwrap())
        .collect();
    json!({ "prompt_ids": PROMPTS, "logits": blocks })
}

/// Every parameter moved by seeded noise, so that a checkpoint that
/// reopens to the fixture's weights (a tensor left unsaved, a tied head
/// written from the wrong tensor) shows.
fn perturb(model: &LanguageModel, seed: i64) {
    tch::manual_seed(seed);
    // In name order: a map's order differs from run to run, and so would
    // the noise each tensor gets.
    let mut vars: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (_, mut t) in vars {
            let noise = t.randn_like() * 0.05;
            let _ = t.f_add_(&noise).unwrap();
        }
    });
}

/// Runs check_saved.py on `checks`; panics with its output unless every
/// checkpoint is within its tolerance.
fn transformers_agrees(checks: &[Value], dir: &Path) {
    let list = dir.join("checks.json");
    write_json(&list, &Value::Array(checks.to_vec()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/check_saved.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg("--batch")
        .arg(&list)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_VERBOSITY", "error")
        .output()
        .expect("python3 runs (scripts/setup-torch.sh, then source scripts/torch-env.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "transformers disagrees with p3o's checkpoints (exit {:?}); without transformers, run scripts/setup-torch.sh:\n{text}",
        out.status.code()
    );
    let ok = format!("{} of {} checkpoints ok", checks.len(), checks.len());
    assert!(text.contains(&ok), "{text}");
}

const CAUSAL_LMS: [&str; 8] = [
    "neox-parallel",
    "gpt2",
    "gptj",
    "llama",
    "llama-tied-llama3",
    "mistral",
    "qwen2",
    "qwen3",
];

const REWARD_MODELS: [&str; 5] = [
    "neox-reward",
    "gpt2-reward",
    "gptj-reward",
    "llama-reward",
    "qwen2-reward",
];

/// p3o saves each family (weights moved from the fixture's), p3o and
/// transformers reopen the checkpoint, and their logits agree within
/// 1e-5 (f32); a reward model's rewards likewise, for the HF-made reward
/// fixtures and for the reward twin of every family. One model is saved
/// from bf16, so the checkpoint holds bf16 tensors.
#[test]
fn saved_checkpoints_reopen_in_transformers() {
    let dir = tmp("saved");
    let mut checks = Vec::new();
    for (i, name) in CAUSAL_LMS.iter().enumerate() {
        let model =
            LanguageModel::load(&fixture(name), Head::Lm, Device::Cpu, Kind::Float).unwrap();
        perturb(&model, i as i64);
        let saved = dir.join(name);
        model.save(&saved).unwrap();
        let again = LanguageModel::load(&saved, Head::Lm, Device::Cpu, Kind::Float).unwrap();
        let expected = saved.join("p3o-logits.json");
        write_json(&expected, &logits_json(&again));
        checks.push(json!({ "dir": saved, "expected": expected, "tol": 1e-5 }));
    }
    // Saved from bf16: the file's tensors are bf16, and both sides read
    // the same values.
    let model =
        LanguageModel::load(&fixture("llama"), Head::Lm, Device::Cpu, Kind::BFloat16).unwrap();
    let saved = dir.join("llama-bf16");
    model.save(&saved).unwrap();
    let header = std::fs::read(saved.join("model.safetensors")).unwrap();
    let len = u64::from_le_bytes(header[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&header[8..8 + len]).unwrap();
    assert_eq!(header["lm_head.weight"]["dtype"], "BF16", "{header}");
    let again = LanguageModel::load(&saved, Head::Lm, Device::Cpu, Kind::Float).unwrap();
    let expected = saved.join("p3o-logits.json");
    write_json(&expected, &logits_json(&again));
    checks.push(json!({ "dir": saved, "expected": expected, "tol": 1e-5 }));

    for (i, name) in REWARD_MODELS.iter().enumerate() {
        let model =
            LanguageModel::load(&fixture(name), Head::Score, Device::Cpu, Kind::Float).unwrap();
        perturb(&model, 100 + i as i64);
        checks.push(reward_check(&model, &dir.join(name)));
    }
    // The `*ForSequenceClassification` twin of every family, Mistral's and
    // Qwen3's among them (no HF-made fixture), as `p3o reward-model train`
    // makes it from a causal LM: a `score` head on the body.
    for (i, name) in CAUSAL_LMS.iter().enumerate() {
        let model = reward_model_from(&fixture(name), Device::Cpu).unwrap();
        perturb(&model, 200 + i as i64);
        checks.push(reward_check(&model, &dir.join(format!("{name}-as-reward"))));
    }
    transformers_agrees(&checks, &dir);
}

/// Saves reward model `model` to `saved`, reopens it in p3o, and writes
/// p3o's rewards of right-padded rows for transformers to recompute.
fn reward_check(model: &LanguageModel, saved: &Path) -> Value {
    model.save(saved).unwrap();
    let again = LanguageModel::load(saved, Head::Score, Device::Cpu, Kind::Float).unwrap();
    let pad = again.config.pad_token_id.unwrap();
    // Right-padded rows whose real tokens never end in the pad id.
    let rows: Vec<Vec<i64>> = PROMPTS
        .iter()
        .map(|p| p.iter().copied().filter(|&t| t != pad).collect())
        .collect();
    let width = rows.iter().map(Vec::len).max().unwrap();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for r in &rows {
        ids.extend(
            r.iter()
                .copied()
                .chain(std::iter::repeat_n(pad, width - r.len())),
        );
        mask.extend(
            std::iter::repeat_n(1i64, r.len()).chain(std::iter::repeat_n(0, width - r.len())),
        );
    }
    let shape = [rows.len() as i64, width as i64];
    let got = rewards(
        &again,
        &Tensor::from_slice(&ids).view(shape),
        &Tensor::from_slice(&mask).view(shape),
    )
    .unwrap();
    let got = Vec::<f32>::try_from(got).unwrap();
    assert!(
        got.iter().all(|r| r.abs() > 1e-3),
        "{}: rewards near zero {got:?}",
        saved.display()
    );
    let expected = saved.join("p3o-rewards.json");
    write_json(
        &expected,
        &json!({ "ids": rows, "rewards": got, "pad_id": pad }),
    );
    json!({ "dir": saved, "expected": expected, "reward": true, "tol": 1e-5 })
}

/// A copy of fixture `name` whose config.json is `edit`ed.
fn respelled(name: &str, tag: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let dir = tmp(&format!("{name}-{tag}"));
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let mut config = read_json(&dir.join("config.json"));
    edit(&mut config);
    write_json(&dir.join("config.json"), &config);
    dir
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Hub checkpoints of Llama 3 carry `rope_theta` and `rope_scaling` (with
/// `rope_type`, or `type` in older ones) at the top level; GPT-NeoX ones
/// carry `rotary_pct` and `rotary_emb_base`. Each spelling loads to the
/// same logits as `rope_parameters`, bit for bit, and transformers reads
/// the respelled configs to the fixture's own expected logits.
#[test]
fn old_rope_spellings_load_as_rope_parameters() {
    let llama3 = |key: &'static str| {
        move |c: &mut Value| {
            let mut p = c["rope_parameters"].take();
            let o = c.as_object_mut().unwrap();
            o.remove("rope_parameters");
            let theta = p.as_object_mut().unwrap().remove("rope_theta").unwrap();
            o.insert("rope_theta".into(), theta);
            let kind = p.as_object_mut().unwrap().remove("rope_type").unwrap();
            p.as_object_mut().unwrap().insert(key.into(), kind);
            o.insert("rope_scaling".into(), p);
        }
    };
    let neox = |c: &mut Value| {
        let p = c["rope_parameters"].take();
        let o = c.as_object_mut().unwrap();
        o.remove("rope_parameters");
        o.insert("rotary_pct".into(), p["partial_rotary_factor"].clone());
        o.insert("rotary_emb_base".into(), p["rope_theta"].clone());
    };
    let cases = [
        (
            "llama-tied-llama3",
            respelled("llama-tied-llama3", "rope-type", llama3("rope_type")),
        ),
        (
            "llama-tied-llama3",
            respelled("llama-tied-llama3", "type", llama3("type")),
        ),
        (
            "neox-odd-rotary",
            respelled("neox-odd-rotary", "rotary-pct", neox),
        ),
    ];
    let mut checks = Vec::new();
    for (name, dir) in &cases {
        let config = read_json(&dir.join("config.json"));
        assert!(config.get("rope_parameters").is_none(), "{config}");
        let new = LanguageModel::load(&fixture(name), Head::Lm, Device::Cpu, Kind::Float).unwrap();
        let old = LanguageModel::load(dir, Head::Lm, Device::Cpu, Kind::Float).unwrap();
        for p in PROMPTS {
            assert_eq!(
                max_abs_diff(&common::logits(&new, p), &common::logits(&old, p)),
                0.0,
                "{}: the old spelling gives other logits",
                dir.display()
            );
        }
        checks.push(json!({ "dir": dir, "expected": dir.join("expected.json"), "tol": 1e-5 }));
    }
    transformers_agrees(&checks, &tmp("spellings"));
}
