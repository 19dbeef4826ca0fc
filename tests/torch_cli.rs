//! `p3o logprobs`, `generate` and `reward` on the HF fixtures.
#![cfg(feature = "torch")]

mod common;

use common::run_p3o as p3o;

use std::process::Output;

fn model(name: &str) -> String {
    format!(
        "{}/tests/fixtures/models/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Text and id inputs agree; the total is the sum of the token log-probs.
// spec: C-SEQ-LOGPROB
#[test]
fn logprobs_of_text_and_ids_agree() {
    let m = model("neox-parallel");
    let text = p3o(
        &["logprobs", "--model", &m],
        "{\"prompt\":\"the policy\",\"response\":\" samples\"}\n",
    );
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let t = &lines(&text)[0];
    let tok = tokenizers::Tokenizer::from_file(format!("{m}/tokenizer.json")).unwrap();
    let ids = |s: &str| tok.encode(s, false).unwrap().get_ids().to_vec();
    let line =
        serde_json::json!({"prompt_ids": ids("the policy"), "response_ids": ids(" samples")})
            .to_string();
    let by_ids = &lines(&p3o(&["logprobs", "--model", &m], &line))[0];
    assert_eq!(t, by_ids);
    let tokens: Vec<f64> = t["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(tokens.len(), ids(" samples").len());
    assert!((tokens.iter().sum::<f64>() - t["logprob"].as_f64().unwrap()).abs() < 1e-9);
}

/// Greedy generation from the CLI equals HF's greedy continuation, and a
/// seeded sample repeats.
#[test]
fn generate_greedy_and_seeded() {
    let m = model("gpt2");
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{m}/expected.json")).unwrap())
            .unwrap();
    let input = format!("{{\"prompt_ids\":{}}}\n", exp["prompt_ids"][0]);
    let out = p3o(
        &[
            "generate",
            "--model",
            &m,
            "--max-new-tokens",
            "12",
            "--temperature",
            "0",
        ],
        &input,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines(&out)[0]["response_ids"], exp["greedy_ids"][0]);
    let args = [
        "generate",
        "--model",
        &m,
        "--max-new-tokens",
        "8",
        "--top-p",
        "0.9",
        "--seed",
        "5",
    ];
    let input = "{\"prompt\":\"the quick\"}\n{\"prompt\":\"a reward model\"}\n";
    let (a, b) = (p3o(&args, input), p3o(&args, input));
    assert!(a.status.success());
    assert_eq!(a.stdout, b.stdout);
    assert_eq!(lines(&a).len(), 2);
}

/// The reward of prompt + response is the model's reward of the joined ids.
#[test]
fn reward_command() {
    let m = model("neox-reward");
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{m}/expected.json")).unwrap())
            .unwrap();
    let ids = exp["ids"][0].as_array().unwrap();
    let (p, r) = ids.split_at(2);
    let line = serde_json::json!({"prompt_ids": p, "response_ids": r}).to_string();
    let out = p3o(&["reward", "--model", &m], &line);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = lines(&out)[0]["reward"].as_f64().unwrap();
    let want = exp["rewards"][0].as_f64().unwrap();
    assert!(
        (got - want).abs() <= p3o::tolerance::HF_F32,
        "{got} vs {want}"
    );
}

/// Bad input: one line naming the line and field, exit status 2.
#[test]
fn lm_command_errors() {
    let m = model("gpt2");
    let cases: [(&[&str], &str); 7] = [
        (&["logprobs", "--model", &m], "{\"prompt_ids\":[1,2]}\n"),
        (
            &["logprobs", "--model", &m],
            "{\"prompt_ids\":[1,2],\"response_ids\":[3,400]}\n",
        ),
        (
            &["logprobs", "--model", &m],
            "{\"prompt_ids\":[1],\"response_ids\":[2]}\nnot json\n",
        ),
        (
            &["generate", "--model", &m, "--max-new-tokens", "10"],
            &format!("{{\"prompt_ids\":{:?}}}\n", vec![1; 60]),
        ),
        (
            &["generate", "--model", &m, "--max-new-tokens", "0"],
            "{\"prompt\":\"a\"}\n",
        ),
        (&["reward", "--model", &m], "{\"prompt\":\"a\"}\n"),
        (&["logprobs", "--model", "/nonexistent-model"], ""),
    ];
    let mut report = String::new();
    for (args, input) in cases {
        let out = p3o(args, input);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
        report.push_str(&err.replace(env!("CARGO_MANIFEST_DIR"), "$ROOT"));
    }
    insta::assert_snapshot!(report);
}

/// `p3o` links no system font library (a bare CUDA image has neither
/// fontconfig nor freetype): the charts draw with an embedded font.
#[cfg(target_os = "linux")]
#[test]
fn p3o_links_no_system_font_library() {
    let bin = env!("CARGO_BIN_EXE_p3o");
    let out = match std::process::Command::new("ldd").arg(bin).output() {
        Ok(o) => o,
        Err(e) => {
            common::skip(&format!("ldd could not run ({e})"));
            return;
        }
    };
    let deps = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ldd {bin} failed: {deps}");
    assert!(deps.contains("libc.so"), "ldd listed nothing: {deps}");
    for lib in ["fontconfig", "freetype"] {
        assert!(!deps.contains(lib), "p3o links {lib}:\n{deps}");
    }
}
