//! LoRA adapters in PEFT's layout ([C-LORA]): adapters PEFT made (committed
//! fixtures, tests/fixtures/make_peft_adapters.py) open in p3o with PEFT's
//! logits, and adapters p3o saves open in PEFT with p3o's logits. The PEFT
//! side runs tests/fixtures/check_peft.py with the `python3` on PATH
//! (scripts/torch-env.sh puts the virtual environment of
//! scripts/setup-torch.sh first, which has transformers and peft): a
//! missing peft fails the test, it is not skipped.
#![cfg(feature = "torch")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use p3o::tolerance::HF_F32;
use p3o::torch::nn::{LoraSpec, LoraTargets};
use p3o::torch::peft::read_adapter_config;
use p3o::torch::{Head, LanguageModel};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn rows(v: &Value) -> Tensor {
    let rows = v.as_array().unwrap();
    let flat: Vec<f32> = rows
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, -1])
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

// spec: C-LORA
#[test]
fn peft_made_adapters_open_with_peft_logits() {
    for name in ["llama", "gpt2", "neox-parallel"] {
        let dir = fixtures().join("adapters").join(format!("{name}-lora"));
        let (spec, base) = read_adapter_config(&dir).unwrap();
        let base = base.unwrap();
        assert_eq!(
            base.canonicalize().unwrap(),
            fixtures().join("models").join(name).canonicalize().unwrap()
        );
        let model =
            LanguageModel::load_with_lora(&base, Head::Lm, Device::Cpu, Kind::Float, spec, 0)
                .unwrap();
        model.load_adapters(&dir).unwrap();
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let ids: Vec<i64> = expected["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        let got = common::logits(&model, &ids);
        let want = rows(&expected["logits"]);
        assert!(
            max_diff(&got, &want) <= HF_F32,
            "{name}: {:e}",
            max_diff(&got, &want)
        );
        // The adapters matter: the base model's logits are far from them.
        model.lora.set_enabled(false);
        assert!(
            max_diff(&common::logits(&model, &ids), &want) > 1e-2,
            "{name}: the adapter does nothing"
        );
    }
}

// spec: C-LORA
#[test]
fn p3o_saved_adapters_open_in_peft() {
    let ids = [5i64, 17, 42, 99, 3, 8];
    for (name, targets) in [
        ("llama", LoraTargets::AllLinear),
        (
            "gpt2",
            LoraTargets::Modules(vec!["c_attn".into(), "c_proj".into()]),
        ),
        (
            "neox-parallel",
            LoraTargets::Modules(vec!["query_key_value".into(), "dense_4h_to_h".into()]),
        ),
        ("qwen3", LoraTargets::AllLinear),
    ] {
        let base = fixtures().join("models").join(name);
        let spec = LoraSpec {
            r: 3,
            alpha: 5.0,
            targets,
        };
        let model = LanguageModel::load_with_lora(
            &base,
            Head::Lm,
            Device::Cpu,
            Kind::Float,
            spec.clone(),
            1,
        )
        .unwrap();
        tch::manual_seed(2);
        tch::no_grad(|| {
            for (n, mut t) in model.lora.var_store().unwrap().variables() {
                if n.ends_with(".lora_B.weight") {
                    t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.2));
                }
            }
        });
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("peft-{name}"));
        let _ = std::fs::remove_dir_all(&out);
        model
            .save_adapters(&out, &base.display().to_string())
            .unwrap();
        // p3o reads back what it wrote.
        let (again, named) = read_adapter_config(&out).unwrap();
        assert_eq!(again, spec, "{name}");
        assert_eq!(named, Some(base.clone()));
        let reread =
            LanguageModel::load_with_lora(&base, Head::Lm, Device::Cpu, Kind::Float, again, 9)
                .unwrap();
        reread.load_adapters(&out).unwrap();
        let mine = common::logits(&model, &ids);
        assert!(
            common::logits(&reread, &ids).equal(&mine),
            "{name}: reloaded adapters"
        );
        // PEFT reads it too, with the same logits.
        let mut cmd = Command::new("python3");
        cmd.arg(fixtures().join("check_peft.py"))
            .arg(&base)
            .arg(&out);
        cmd.args(ids.iter().map(|i| i.to_string()));
        let o = cmd.output().expect("python3 runs");
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let theirs = rows(&serde_json::from_str(&String::from_utf8_lossy(&o.stdout)).unwrap());
        assert!(
            max_diff(&mine, &theirs) <= HF_F32,
            "{name}: PEFT differs by {:e}",
            max_diff(&mine, &theirs)
        );
    }
}

/// Adapter files that do not fit are refused with the file and the reason.
#[test]
fn bad_adapters_are_refused() {
    let src = fixtures().join("adapters/llama-lora");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("peft-bad");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    for (field, value, says) in [
        ("peft_type", Value::from("IA3"), "peft_type"),
        ("r", Value::from(0), "r 0"),
        ("use_dora", Value::from(true), "use_dora"),
        (
            "rank_pattern",
            serde_json::json!({"q_proj": 8}),
            "rank_pattern",
        ),
        ("target_modules", Value::from(5), "target_modules"),
    ] {
        let mut c = config.clone();
        c[field] = value;
        std::fs::write(dir.join("adapter_config.json"), c.to_string()).unwrap();
        let err = read_adapter_config(&dir).unwrap_err().to_string();
        assert!(
            err.contains("adapter_config.json") && err.contains(says),
            "{field}: {err}"
        );
    }
    // Weights of another shape, or missing, name the tensor.
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    let (mut spec, base) = read_adapter_config(&src).unwrap();
    spec.r = 2;
    let model =
        LanguageModel::load_with_lora(&base.unwrap(), Head::Lm, Device::Cpu, Kind::Float, spec, 0)
            .unwrap();
    let err = model.load_adapters(&src).unwrap_err().to_string();
    assert!(err.contains("shape"), "{err}");
}
