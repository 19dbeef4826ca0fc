//! The hostile-input suite: bad and extreme input to every command, as a
//! new user or a typo would give it. Each case runs `p3o` in a directory of
//! its own and fails on a panic, on an exit status other than the expected
//! one (2 for bad input), on a refusal that is not one line naming the
//! field, file or line (the case's needles), and on any file of its
//! directory changed, removed or added by a refused command.
#![cfg(feature = "torch")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// What a case must end with.
#[derive(Clone, Debug)]
enum Expect {
    /// Exit status 2, one line on standard error holding every needle,
    /// every file as it was.
    Refused(Vec<String>),
    /// Exit status 0 and every file as it was (a command with nothing to
    /// write, or nothing left to do).
    Unchanged,
    /// Exit status 0.
    Accepted,
}

struct Case {
    name: String,
    args: Vec<String>,
    stdin: String,
    expect: Expect,
    /// Fills the case's directory before the run.
    setup: Box<dyn Fn(&Path) + Send + Sync>,
}

fn refused(needles: &[&str]) -> Expect {
    Expect::Refused(needles.iter().map(|s| s.to_string()).collect())
}

fn case(
    name: impl Into<String>,
    args: &[&str],
    stdin: &str,
    expect: Expect,
    setup: impl Fn(&Path) + Send + Sync + 'static,
) -> Case {
    Case {
        name: name.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        stdin: stdin.into(),
        expect,
        setup: Box::new(setup),
    }
}

fn nothing(_: &Path) {}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every file under `dir` with its bytes (directories as empty entries).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(dir).unwrap().to_path_buf();
            if path.is_dir() {
                out.insert(rel, None);
                stack.push(path);
            } else {
                out.insert(rel, Some(std::fs::read(&path).unwrap_or_default()));
            }
        }
    }
    out
}

fn changes(
    before: &BTreeMap<PathBuf, Option<Vec<u8>>>,
    after: &BTreeMap<PathBuf, Option<Vec<u8>>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (path, bytes) in before {
        match after.get(path) {
            None => out.push(format!("removed {}", path.display())),
            Some(b) if b != bytes => out.push(format!("changed {}", path.display())),
            _ => {}
        }
    }
    for path in after.keys().filter(|p| !before.contains_key(*p)) {
        out.push(format!("added {}", path.display()));
    }
    out
}

/// Runs one case; returns what is wrong with its outcome, if anything, or
/// else its error line (empty for a case that succeeds).
fn run_case(index: usize, c: &Case) -> Result<String, String> {
    let dir = root().join(format!("{index:03}-{}", c.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    (c.setup)(&dir);
    let before = snapshot(&dir);
    let logs = root().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let (out_path, err_path) = (
        logs.join(format!("{index:03}.out")),
        logs.join(format!("{index:03}.err")),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_p3o"))
        .args(&c.args)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("p3o starts");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(c.stdin.as_bytes());
    }
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{index:03}-{}: still running after 120 s (a hang)",
                c.name
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let code = status.code();
    let changed = changes(&before, &snapshot(&dir));
    let problem = match &c.expect {
        _ if code == Some(101) => Some(format!("panicked: {stderr}")),
        Expect::Refused(needles) => {
            if code != Some(2) {
                Some(format!("exit {code:?}, not 2; stderr: {stderr}"))
            } else if lines.len() != 1 || !lines[0].starts_with("error: ") {
                Some(format!("not one `error:` line: {stderr:?}"))
            } else if lines[0].len() > 400 {
                Some(format!("a {}-character message", lines[0].len()))
            } else if let Some(n) = needles.iter().find(|n| !lines[0].contains(n.as_str())) {
                Some(format!("the message does not name `{n}`: {}", lines[0]))
            } else if !changed.is_empty() {
                Some(format!("files touched: {changed:?}"))
            } else {
                None
            }
        }
        Expect::Unchanged if code != Some(0) => Some(format!("exit {code:?}: {stderr}")),
        Expect::Unchanged if !changed.is_empty() => Some(format!("files touched: {changed:?}")),
        Expect::Accepted if code != Some(0) => Some(format!("exit {code:?}: {stderr}")),
        _ => None,
    };
    match problem {
        Some(p) => Err(format!("{index:03}-{} ({}): {p}", c.name, c.args.join(" "))),
        None => {
            let _ = std::fs::remove_dir_all(&dir);
            Ok(lines.first().map_or(String::new(), |l| l.to_string()))
        }
    }
}

/// Runs every case on two threads and fails with the list of bad outcomes;
/// returns each case's name and error line, in case order.
fn run_all(group: &str, cases: Vec<Case>, at_least: usize) -> Vec<(String, String)> {
    assert!(
        cases.len() >= at_least,
        "{group}: only {} cases",
        cases.len()
    );
    let offset = match group {
        "models" => 0,
        "flags" => 300,
        "files" => 500,
        _ => 700,
    };
    let cases: Vec<(usize, Case)> = cases
        .into_iter()
        .enumerate()
        .map(|(i, c)| (offset + i, c))
        .collect();
    let (a, b): (Vec<_>, Vec<_>) = cases.iter().partition(|(i, _)| i % 2 == 0);
    let work = |part: Vec<&(usize, Case)>| -> Vec<(usize, Result<String, String>)> {
        part.into_iter()
            .map(|(i, c)| (*i, run_case(*i, c)))
            .collect()
    };
    let (mut outcomes, outcomes_b) = std::thread::scope(|s| {
        let h = s.spawn(|| work(b));
        (work(a), h.join().unwrap())
    });
    outcomes.extend(outcomes_b);
    outcomes.sort_by_key(|(i, _)| *i);
    let mut bad: Vec<String> = outcomes
        .iter()
        .filter_map(|(_, r)| r.as_ref().err().cloned())
        .collect();
    bad.sort();
    println!("{group}: {} cases, {} went wrong", cases.len(), bad.len());
    assert!(
        bad.is_empty(),
        "{group}: {} of {} cases went wrong:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
    cases
        .iter()
        .zip(outcomes)
        .map(|((_, c), (_, r))| (c.name.clone(), r.unwrap()))
        .collect()
}

// ---------------------------------------------------------------------
// Models: broken config.json, weights and tokenizers, through every command
// that loads a model.

/// A copy of the `neox-serial` fixture at `dir/m`, its config patched.
fn patched_model(dir: &Path, patch: &(dyn Fn(&mut Value) + Send + Sync)) {
    let m = dir.join("m");
    copy_dir(&fixture("neox-serial"), &m);
    let path = m.join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    patch(&mut cfg);
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
}

/// Overwrites the first value of tensor `name` in `file` with `bytes`.
fn poke_tensor(file: &Path, name: &str, bytes: &[u8]) {
    let mut data = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&data[8..8 + n]).unwrap();
    let start = header[name]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
    data[start..start + bytes.len()].copy_from_slice(bytes);
    std::fs::write(file, data).unwrap();
}

type Setup = Box<dyn Fn(&Path) + Send + Sync>;

fn config_patch(patch: impl Fn(&mut Value) + Send + Sync + 'static) -> Setup {
    Box::new(move |d: &Path| patched_model(d, &patch))
}

fn set(key: &'static str, v: Value) -> Setup {
    config_patch(move |c| c[key] = v.clone())
}

fn rope(key: &'static str, v: Value) -> Setup {
    config_patch(move |c| c["rope_parameters"][key] = v.clone())
}

/// A copy of fixture `name` at `dir/m`, its config patched.
fn family_patch(name: &'static str, patch: impl Fn(&mut Value) + Send + Sync + 'static) -> Setup {
    Box::new(move |d: &Path| {
        let m = d.join("m");
        copy_dir(&fixture(name), &m);
        let path = m.join("config.json");
        let mut cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        patch(&mut cfg);
        std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    })
}

/// Broken configs of the Llama-shaped families and GPT-J: (name, setup,
/// needles of its message).
fn broken_family_models() -> Vec<(&'static str, Setup, Vec<&'static str>)> {
    let set_in = |fixture: &'static str, key: &'static str, v: Value| {
        family_patch(fixture, move |c| c[key] = v.clone())
    };
    vec![
        (
            "llama-kv-heads-not-dividing",
            set_in("llama", "num_key_value_heads", json!(3)),
            vec!["num_key_value_heads", "num_attention_heads"],
        ),
        (
            "llama-kv-heads-zero",
            set_in("llama", "num_key_value_heads", json!(0)),
            vec!["num_key_value_heads"],
        ),
        (
            "llama-head-dim-odd",
            set_in("llama", "head_dim", json!(11)),
            vec!["head_dim", "even"],
        ),
        (
            "llama-head-dim-mismatch",
            set_in("llama", "head_dim", json!(16)),
            vec!["tensor `model.layers.0.self_attn", "model.safetensors"],
        ),
        (
            "llama-head-dim-absent-not-dividing",
            family_patch("llama", |c| {
                c.as_object_mut().unwrap().remove("head_dim");
                c["num_attention_heads"] = json!(5);
                c["num_key_value_heads"] = json!(5);
            }),
            vec!["hidden_size", "num_attention_heads"],
        ),
        (
            "llama-rope-scaling-yarn-old-spelling",
            family_patch("llama", |c| {
                c.as_object_mut().unwrap().remove("rope_parameters");
                c["rope_theta"] = json!(500.0);
                c["rope_scaling"] = json!({"type": "yarn", "factor": 2.0});
            }),
            vec!["rope_type", "yarn", "llama3"],
        ),
        (
            "llama-rope-scaling-not-object",
            family_patch("llama", |c| {
                c.as_object_mut().unwrap().remove("rope_parameters");
                c["rope_scaling"] = json!("llama3");
            }),
            vec!["rope_scaling", "object"],
        ),
        (
            "llama3-rope-without-factor",
            family_patch("llama-tied-llama3", |c| {
                c["rope_parameters"]
                    .as_object_mut()
                    .unwrap()
                    .remove("factor");
            }),
            vec!["rope_parameters.factor", "llama3"],
        ),
        (
            "llama3-rope-high-below-low",
            family_patch("llama-tied-llama3", |c| {
                c["rope_parameters"]["high_freq_factor"] = json!(0.5);
            }),
            vec!["high_freq_factor"],
        ),
        (
            "llama-rope-theta-negative",
            family_patch("llama", |c| {
                c["rope_parameters"]["rope_theta"] = json!(-1.0)
            }),
            vec!["rope_theta"],
        ),
        (
            "llama-partial-rotary",
            family_patch("llama", |c| {
                c["rope_parameters"]["partial_rotary_factor"] = json!(0.5)
            }),
            vec!["partial_rotary_factor"],
        ),
        (
            "llama-hidden-act",
            set_in("llama", "hidden_act", json!("relu")),
            vec!["hidden_act", "relu", "silu"],
        ),
        (
            "llama-rms-eps-zero",
            set_in("llama", "rms_norm_eps", json!(0)),
            vec!["rms_norm_eps"],
        ),
        (
            "llama-untied-without-head",
            set_in("llama-tied-llama3", "tie_word_embeddings", json!(false)),
            vec!["lm_head.weight", "missing"],
        ),
        (
            "llama-weights-named-qwen2",
            set_in("llama", "model_type", json!("qwen2")),
            vec!["self_attn.k_proj.bias", "missing"],
        ),
        (
            "llama-eos-list-out-of-range",
            set_in("llama", "eos_token_id", json!([0, 9999])),
            vec!["eos_token_id", "9999"],
        ),
        (
            "llama-eos-string",
            set_in("llama", "eos_token_id", json!("</s>")),
            vec!["eos_token_id", "token id"],
        ),
        (
            "architecture-unknown",
            family_patch("llama", |c| {
                c.as_object_mut().unwrap().remove("model_type");
                c["architectures"] = json!(["FooForCausalLM"]);
            }),
            vec!["FooForCausalLM", "llama"],
        ),
        (
            "mistral-window-zero",
            set_in("mistral", "sliding_window", json!(0)),
            vec!["sliding_window"],
        ),
        (
            "qwen2-sliding-window",
            set_in("qwen2", "use_sliding_window", json!(true)),
            vec!["use_sliding_window", "qwen2"],
        ),
        (
            "qwen3-sliding-layer",
            set_in(
                "qwen3",
                "layer_types",
                json!(["full_attention", "sliding_attention"]),
            ),
            vec!["sliding_attention", "qwen3"],
        ),
        (
            "qwen3-head-dim-zero",
            set_in("qwen3", "head_dim", json!(0)),
            vec!["head_dim"],
        ),
        (
            "gptj-rotary-odd",
            set_in("gptj", "rotary_dim", json!(3)),
            vec!["rotary_dim", "even"],
        ),
        (
            "gptj-rotary-beyond-head",
            set_in("gptj", "rotary_dim", json!(64)),
            vec!["rotary_dim"],
        ),
        (
            "gptj-heads-not-dividing",
            set_in("gptj", "n_head", json!(5)),
            vec!["n_embd", "n_head"],
        ),
        (
            "gptj-activation",
            set_in("gptj", "activation_function", json!("mish")),
            vec!["activation_function", "mish"],
        ),
    ]
}

/// Every broken model: (name, setup, needles of its message).
fn broken_models() -> Vec<(&'static str, Setup, Vec<&'static str>)> {
    let raw_config = |text: &'static str| -> Setup {
        Box::new(move |d: &Path| {
            patched_model(d, &|_| {});
            std::fs::write(d.join("m/config.json"), text).unwrap();
        })
    };
    vec![
        (
            "hidden-negative",
            set("hidden_size", json!(-32)),
            vec!["config.json", "hidden_size"],
        ),
        (
            "hidden-zero",
            set("hidden_size", json!(0)),
            vec!["config.json", "hidden_size"],
        ),
        (
            "hidden-2e40",
            set("hidden_size", json!(1u64 << 40)),
            vec!["config.json", "hidden_size"],
        ),
        (
            "hidden-mismatch",
            set("hidden_size", json!(48)),
            vec!["tensor `", "model.safetensors"],
        ),
        (
            "hidden-huge-fits-i64",
            config_patch(|c| {
                c["hidden_size"] = json!(1 << 20);
                c["intermediate_size"] = json!(1 << 22);
            }),
            vec!["config.json", "parameters"],
        ),
        (
            "heads-zero",
            set("num_attention_heads", json!(0)),
            vec!["config.json", "num_attention_heads"],
        ),
        (
            "heads-negative",
            set("num_attention_heads", json!(-4)),
            vec!["num_attention_heads"],
        ),
        (
            "heads-not-dividing",
            set("num_attention_heads", json!(5)),
            vec!["hidden_size", "num_attention_heads"],
        ),
        (
            "layers-negative",
            set("num_hidden_layers", json!(-1)),
            vec!["config.json", "num_hidden_layers"],
        ),
        (
            "layers-zero",
            set("num_hidden_layers", json!(0)),
            vec!["num_hidden_layers"],
        ),
        (
            "layers-fewer",
            set("num_hidden_layers", json!(1)),
            vec!["layer 1", "num_hidden_layers"],
        ),
        (
            "layers-more",
            set("num_hidden_layers", json!(3)),
            vec!["gpt_neox.layers.2", "missing"],
        ),
        (
            "intermediate-zero",
            set("intermediate_size", json!(0)),
            vec!["intermediate_size"],
        ),
        (
            "vocab-negative",
            set("vocab_size", json!(-1)),
            vec!["vocab_size"],
        ),
        (
            "vocab-smaller",
            set("vocab_size", json!(100)),
            vec!["tensor `"],
        ),
        (
            "positions-zero",
            set("max_position_embeddings", json!(0)),
            vec!["max_position_embeddings"],
        ),
        (
            "rotary-zero",
            rope("partial_rotary_factor", json!(0)),
            vec!["partial_rotary_factor"],
        ),
        (
            "rotary-above-one",
            rope("partial_rotary_factor", json!(1.5)),
            vec!["partial_rotary_factor"],
        ),
        (
            "rotary-negative",
            rope("partial_rotary_factor", json!(-0.25)),
            vec!["partial_rotary_factor"],
        ),
        (
            "rotary-string",
            rope("partial_rotary_factor", json!("half")),
            vec!["partial_rotary_factor"],
        ),
        (
            "rotary-old-spelling",
            config_patch(|c| {
                c.as_object_mut().unwrap().remove("rope_parameters");
                c["rotary_pct"] = json!(2.0);
            }),
            vec!["rotary_pct"],
        ),
        (
            "rope-theta-zero",
            rope("rope_theta", json!(0)),
            vec!["rope_theta"],
        ),
        (
            "rope-theta-negative",
            rope("rope_theta", json!(-500)),
            vec!["rope_theta"],
        ),
        (
            "rope-type",
            rope("rope_type", json!("yarn")),
            vec!["rope_type", "yarn"],
        ),
        (
            "norm-eps-zero",
            set("layer_norm_eps", json!(0)),
            vec!["layer_norm_eps"],
        ),
        (
            "eos-out-of-range",
            set("eos_token_id", json!(100000)),
            vec!["eos_token_id"],
        ),
        (
            "pad-negative",
            set("pad_token_id", json!(-3)),
            vec!["pad_token_id"],
        ),
        (
            "model-type-unknown",
            set("model_type", json!("mamba")),
            vec!["mamba", "gpt_neox", "qwen3"],
        ),
        (
            "model-type-missing",
            config_patch(|c| {
                c.as_object_mut().unwrap().remove("model_type");
                c.as_object_mut().unwrap().remove("architectures");
            }),
            vec!["model_type"],
        ),
        (
            "hidden-act",
            set("hidden_act", json!("relu")),
            vec!["hidden_act", "relu"],
        ),
        (
            "field-wrong-type",
            set("hidden_size", json!("32")),
            vec!["config.json", "hidden_size"],
        ),
        (
            "config-duplicate-key",
            raw_config("{\"model_type\": \"gpt_neox\", \"model_type\": \"gpt2\"}"),
            vec!["config.json", "duplicate key"],
        ),
        (
            "config-malformed",
            raw_config("{\"model_type\": "),
            vec!["config.json"],
        ),
        (
            "config-not-utf8",
            Box::new(|d: &Path| {
                patched_model(d, &|_| {});
                std::fs::write(d.join("m/config.json"), b"{\"a\": \"\xff\"}").unwrap();
            }),
            vec!["config.json"],
        ),
        (
            "weights-nan",
            Box::new(|d: &Path| {
                patched_model(d, &|_| {});
                poke_tensor(
                    &d.join("m/model.safetensors"),
                    "gpt_neox.embed_in.weight",
                    &f32::NAN.to_le_bytes(),
                );
            }),
            vec!["embed_in.weight", "NaN"],
        ),
        (
            "weights-infinite",
            Box::new(|d: &Path| {
                patched_model(d, &|_| {});
                poke_tensor(
                    &d.join("m/model.safetensors"),
                    "gpt_neox.layers.0.mlp.dense_h_to_4h.weight",
                    &f32::INFINITY.to_le_bytes(),
                );
            }),
            vec!["dense_h_to_4h", "infinite"],
        ),
        (
            "weights-truncated",
            Box::new(|d: &Path| {
                patched_model(d, &|_| {});
                let f = d.join("m/model.safetensors");
                let b = std::fs::read(&f).unwrap();
                std::fs::write(&f, &b[..b.len() / 2]).unwrap();
            }),
            vec!["model.safetensors"],
        ),
        (
            "weights-missing",
            Box::new(|d: &Path| {
                patched_model(d, &|_| {});
                std::fs::remove_file(d.join("m/model.safetensors")).unwrap();
            }),
            vec!["model.safetensors"],
        ),
        (
            "tokenizer-id-beyond-vocab",
            Box::new(|d: &Path| {
                patched_model(d, &|_| {});
                let path = d.join("m/tokenizer.json");
                let mut t: Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                t["model"]["vocab"]["zzzz"] = json!(400);
                std::fs::write(&path, serde_json::to_string(&t).unwrap()).unwrap();
            }),
            vec!["tokenizer.json", "400", "vocab_size"],
        ),
        (
            "tokenizer-added-token-beyond-vocab",
            Box::new(|d: &Path| {
                patched_model(d, &|_| {});
                let path = d.join("m/tokenizer.json");
                let mut t: Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                t["added_tokens"].as_array_mut().unwrap().push(json!({
                    "id": 512, "content": "<|big|>", "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true
                }));
                std::fs::write(&path, serde_json::to_string(&t).unwrap()).unwrap();
            }),
            vec!["tokenizer.json", "vocab_size"],
        ),
        (
            "generation-config-eos-out-of-range",
            Box::new(|d: &Path| {
                patched_model(d, &|c| {
                    c.as_object_mut().unwrap().remove("eos_token_id");
                });
                std::fs::write(
                    d.join("m/generation_config.json"),
                    r#"{"eos_token_id": 1000}"#,
                )
                .unwrap();
            }),
            vec!["generation_config.json", "eos_token_id"],
        ),
        (
            "tokenizer-malformed",
            Box::new(|d: &Path| {
                patched_model(d, &|_| {});
                std::fs::write(d.join("m/tokenizer.json"), "{").unwrap();
            }),
            vec!["tokenizer.json"],
        ),
    ]
}

/// The commands that load a policy from `m`, with what they need.
fn model_commands() -> Vec<(&'static str, Vec<&'static str>, &'static str)> {
    vec![
        (
            "logprobs",
            vec!["logprobs", "--model", "m"],
            r#"{"prompt": "the policy", "response": " samples"}"#,
        ),
        (
            "generate",
            vec!["generate", "--model", "m", "--max-new-tokens", "2"],
            r#"{"prompt_ids": [1, 2]}"#,
        ),
        (
            "train",
            vec![
                "train",
                "--out",
                "out",
                "--set",
                "policy=m",
                "--set",
                "prompts=builtin",
                "--set",
                "steps=1",
                "--set",
                "max_new_tokens=4",
            ],
            "",
        ),
        (
            "sft",
            vec!["sft", "--out", "out", "--set", "base=m", "--set", "steps=1"],
            "",
        ),
        (
            "reward-model",
            vec![
                "reward-model",
                "train",
                "--base",
                "m",
                "--data",
                "prefs.jsonl",
                "--out",
                "out",
            ],
            "",
        ),
        (
            "eval",
            vec![
                "eval",
                "--policy",
                "m",
                "--reference",
                "m",
                "--reward",
                "builtin:vowels",
                "--prompts",
                "builtin",
                "--samples",
                "1",
                "--max-new-tokens",
                "2",
            ],
            "",
        ),
    ]
}

const PREFS: &str = "{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" c\"}\n{\"prompt\": \"d\", \"chosen\": \" e\", \"rejected\": \" f\"}\n";

#[test]
fn models() {
    let mut cases = Vec::new();
    let models = std::sync::Arc::new(broken_models());
    for (m, (name, _, needles)) in models.iter().enumerate() {
        for (command, args, stdin) in model_commands() {
            let models = models.clone();
            cases.push(case(
                format!("{name}-{command}"),
                &args,
                stdin,
                refused(needles),
                move |d: &Path| {
                    (models[m].1)(d);
                    std::fs::write(d.join("prefs.jsonl"), PREFS).unwrap();
                },
            ));
        }
    }
    // The reward head: the same checks on a reward model's config.
    for (name, key, v) in [
        ("reward-heads-zero", "num_attention_heads", json!(0)),
        ("reward-layers-negative", "num_hidden_layers", json!(-1)),
        ("reward-hidden-2e40", "hidden_size", json!(1u64 << 40)),
    ] {
        let v2 = v.clone();
        cases.push(case(
            name,
            &["reward", "--model", "r"],
            r#"{"prompt_ids": [1, 2]}"#,
            refused(&[key]),
            move |d: &Path| {
                copy_dir(&fixture("neox-reward"), &d.join("r"));
                let path = d.join("r/config.json");
                let mut cfg: Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                cfg[key] = v2.clone();
                std::fs::write(&path, cfg.to_string()).unwrap();
            },
        ));
        cases.push(case(
            format!("{name}-train"),
            &[
                "train",
                "--out",
                "out",
                "--set",
                "policy=p",
                "--set",
                "reward=r",
                "--set",
                "prompts=builtin",
                "--set",
                "steps=1",
            ],
            "",
            refused(&["r/config.json", key]),
            move |d: &Path| {
                copy_dir(&fixture("neox-serial"), &d.join("p"));
                copy_dir(&fixture("neox-reward"), &d.join("r"));
                let path = d.join("r/config.json");
                let mut cfg: Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                cfg[key] = v.clone();
                std::fs::write(&path, cfg.to_string()).unwrap();
            },
        ));
    }
    // The other families' own fields, through `logprobs`.
    for (name, setup, needles) in broken_family_models() {
        cases.push(case(
            format!("{name}-logprobs"),
            &["logprobs", "--model", "m"],
            r#"{"prompt": "the policy", "response": " samples"}"#,
            refused(&needles),
            setup,
        ));
    }
    // A rotary dimension HF makes odd runs, as HF runs it.
    cases.push(case(
        "rotary-odd-runs",
        &["logprobs", "--model", "m"],
        r#"{"prompt": "the policy", "response": " samples"}"#,
        Expect::Unchanged,
        |d: &Path| {
            copy_dir(&fixture("neox-odd-rotary"), &d.join("m"));
        },
    ));
    let messages = run_all("models", cases, 150);
    // The messages themselves, for review: every `logprobs` refusal (whose
    // paths are relative to the case's directory), machine-dependent
    // figures aside.
    let report: Vec<String> = messages
        .iter()
        .filter(|(name, line)| name.ends_with("-logprobs") && !line.contains("GiB available"))
        .map(|(name, line)| format!("{name}: {line}"))
        .collect();
    insta::assert_snapshot!(report.join("\n"));
}

// ---------------------------------------------------------------------
// Flags and standard input of the commands that need no files.

#[test]
fn flags() {
    let m = fixture("neox-serial").display().to_string();
    let mut cases: Vec<Case> = Vec::new();
    let gen_base = ["generate", "--model", m.as_str(), "--max-new-tokens", "2"];
    let prompt = r#"{"prompt_ids": [1, 2]}"#;
    for (name, extra, needles) in [
        ("top-p-above-one", vec!["--top-p", "2"], vec!["--top-p"]),
        ("top-p-nan", vec!["--top-p", "NaN"], vec!["--top-p"]),
        ("top-p-zero", vec!["--top-p", "0"], vec!["--top-p"]),
        ("top-p-negative", vec!["--top-p=-0.5"], vec!["--top-p"]),
        ("top-k-negative", vec!["--top-k=-5"], vec!["--top-k"]),
        ("top-k-zero", vec!["--top-k", "0"], vec!["--top-k"]),
        (
            "batch-zero",
            vec!["--batch-size", "0"],
            vec!["--batch-size"],
        ),
        (
            "batch-negative",
            vec!["--batch-size=-1"],
            vec!["--batch-size"],
        ),
        (
            "temperature-negative",
            vec!["--temperature=-1"],
            vec!["--temperature"],
        ),
        (
            "temperature-nan",
            vec!["--temperature", "nan"],
            vec!["--temperature"],
        ),
        (
            "temperature-inf",
            vec!["--temperature", "inf"],
            vec!["--temperature"],
        ),
        (
            "device-absent",
            vec!["--device", "cuda:99"],
            vec!["--device"],
        ),
        ("device-unknown", vec!["--device", "gpu"], vec!["--device"]),
        ("dtype-unknown", vec!["--dtype", "f8"], vec!["--dtype"]),
        ("seed-negative", vec!["--seed=-1"], vec!["--seed"]),
        (
            "temperature-tiny",
            vec!["--temperature", "1e-40"],
            vec!["--temperature"],
        ),
    ] {
        let args: Vec<&str> = gen_base.iter().copied().chain(extra).collect();
        cases.push(case(
            format!("generate-{name}"),
            &args,
            prompt,
            refused(&needles),
            nothing,
        ));
    }
    for (name, tokens, needles) in [
        ("new-zero", "0", vec!["--max-new-tokens"]),
        ("new-negative", "-3", vec!["--max-new-tokens"]),
        ("new-beyond-positions", "100", vec!["line 1", "positions"]),
    ] {
        cases.push(case(
            format!("generate-{name}"),
            &[
                "generate",
                "--model",
                &m,
                &format!("--max-new-tokens={tokens}"),
            ],
            prompt,
            refused(&needles),
            nothing,
        ));
    }
    // Input lines of logprobs, generate and reward.
    let r = fixture("neox-reward").display().to_string();
    for (name, input, needles) in [
        (
            "id-out-of-range",
            r#"{"prompt_ids": [1000], "response_ids": [1]}"#,
            vec!["line 1", "prompt_ids[0]"],
        ),
        (
            "id-negative",
            r#"{"prompt_ids": [1], "response_ids": [-1]}"#,
            vec!["line 1", "response_ids[0]"],
        ),
        (
            "id-float",
            r#"{"prompt_ids": [1.5], "response_ids": [1]}"#,
            vec!["line 1", "prompt_ids[0]"],
        ),
        (
            "prompt-not-string",
            r#"{"prompt": 5, "response": "a"}"#,
            vec!["line 1", "prompt"],
        ),
        (
            "both-forms",
            r#"{"prompt": "a", "prompt_ids": [1], "response": "b"}"#,
            vec!["line 1", "prompt_ids"],
        ),
        (
            "empty-prompt",
            r#"{"prompt": "", "response": "b"}"#,
            vec!["line 1", "prompt"],
        ),
        (
            "unknown-field",
            r#"{"prompt": "a", "response": "b", "extra": 1}"#,
            vec!["line 1", "extra"],
        ),
        (
            "duplicate-key",
            r#"{"prompt": "a", "prompt": "b", "response": "c"}"#,
            vec!["line 1", "duplicate key"],
        ),
        (
            "malformed-second",
            "{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": ",
            vec!["line 2"],
        ),
        ("not-an-object", "[1, 2]", vec!["line 1", "object"]),
        (
            "missing-response",
            r#"{"prompt": "a"}"#,
            vec!["line 1", "response"],
        ),
        (
            "too-long",
            &format!(
                "{{\"prompt_ids\": {:?}, \"response_ids\": [1]}}",
                vec![1; 80]
            ),
            vec!["line 1", "positions"],
        ),
    ] {
        cases.push(case(
            format!("logprobs-{name}"),
            &["logprobs", "--model", &m],
            input,
            refused(&needles),
            nothing,
        ));
    }
    for (name, input, needles) in [
        (
            "id-out-of-range",
            r#"{"prompt_ids": [1000]}"#,
            vec!["line 1", "prompt_ids[0]"],
        ),
        (
            "duplicate-key",
            r#"{"prompt_ids": [1], "prompt_ids": [2]}"#,
            vec!["line 1", "duplicate key"],
        ),
    ] {
        cases.push(case(
            format!("reward-{name}"),
            &["reward", "--model", &r],
            input,
            refused(&needles),
            nothing,
        ));
        cases.push(case(
            format!("generate-input-{name}"),
            &["generate", "--model", &m, "--max-new-tokens", "2"],
            input,
            refused(&needles),
            nothing,
        ));
    }
    cases.push(case(
        "logprobs-model-missing",
        &["logprobs", "--model", "nowhere"],
        prompt,
        refused(&["nowhere"]),
        nothing,
    ));
    cases.push(case(
        "logprobs-input-missing",
        &["logprobs", "--model", &m, "--input", "nofile.jsonl"],
        "",
        refused(&["nofile.jsonl"]),
        nothing,
    ));
    cases.push(case(
        "logprobs-input-not-utf8",
        &["logprobs", "--model", &m, "--input", "in.jsonl"],
        "",
        refused(&["line 2"]),
        |d: &Path| {
            std::fs::write(
                d.join("in.jsonl"),
                b"{\"prompt_ids\": [1], \"response_ids\": [2]}\n{\"prompt\": \"\xff\"}\n",
            )
            .unwrap();
        },
    ));
    cases.push(case(
        "reward-on-lm",
        &["reward", "--model", &m],
        prompt,
        refused(&["score.weight"]),
        nothing,
    ));
    // p3o bandit.
    for (name, extra, needles) in [
        (
            "dpo-beta-negative",
            vec!["--dpo-beta=-1"],
            vec!["--dpo-beta"],
        ),
        ("dpo-beta-zero", vec!["--dpo-beta", "0"], vec!["--dpo-beta"]),
        ("epochs-zero", vec!["--epochs", "0"], vec!["--epochs"]),
        ("steps-zero", vec!["--steps", "0"], vec!["--steps"]),
        ("actions-one", vec!["--actions", "1"], vec!["--actions"]),
        (
            "actions-huge",
            vec!["--actions", "100000000"],
            vec!["--actions"],
        ),
        ("contexts-zero", vec!["--contexts", "0"], vec!["--contexts"]),
        ("lr-negative", vec!["--lr=-1"], vec!["--lr"]),
        ("lr-zero", vec!["--lr", "0"], vec!["--lr"]),
        ("lr-nan", vec!["--lr", "nan"], vec!["--lr"]),
        ("epsilon-zero", vec!["--epsilon", "0"], vec!["--epsilon"]),
        ("epsilon-negative", vec!["--epsilon=-1"], vec!["--epsilon"]),
        ("beta-negative", vec!["--beta=-0.1"], vec!["--beta"]),
        ("vf-coef-negative", vec!["--vf-coef=-1"], vec!["--vf-coef"]),
        (
            "print-every-zero",
            vec!["--print-every", "0"],
            vec!["--print-every"],
        ),
        (
            "shift-bogus",
            vec!["--reward-shift", "sideways:3"],
            vec!["--reward-shift"],
        ),
        ("format-unknown", vec!["--format", "xml"], vec!["--format"]),
        (
            "steps-huge",
            vec!["--steps", "1000000000000000000"],
            vec!["--steps"],
        ),
        ("pairs-huge", vec!["--pairs", "4000000000"], vec!["--pairs"]),
        ("unknown-flag", vec!["--nope"], vec!["--nope"]),
    ] {
        let args: Vec<&str> = ["bandit"].into_iter().chain(extra).collect();
        cases.push(case(
            format!("bandit-{name}"),
            &args,
            "",
            refused(&needles),
            nothing,
        ));
    }
    // p3o reference.
    for (name, input, needles) in [
        (
            "duplicate-key",
            r#"{"algorithm": "vpg", "algorithm": "ppg", "logits": [[0, 1]], "rewards": [[0, 1]]}"#,
            vec!["line 1", "duplicate key `algorithm`"],
        ),
        (
            "spread-overflows",
            r#"{"algorithm": "vpg", "logits": [[1e308, -1e308]], "rewards": [[0, 1]]}"#,
            vec!["line 1", "logits[0]"],
        ),
        (
            "old-spread-overflows",
            r#"{"algorithm": "ppg", "logits": [[0, 1]], "logits_old": [[-1.7e308, 1.7e308]], "rewards": [[0, 1]]}"#,
            vec!["line 1", "logits_old[0]"],
        ),
        (
            "number-overflows",
            r#"{"algorithm": "vpg", "logits": [[1e400, 0]], "rewards": [[0, 1]]}"#,
            vec!["line 1"],
        ),
        (
            "nan",
            r#"{"algorithm": "vpg", "logits": [[NaN, 0]], "rewards": [[0, 1]]}"#,
            vec!["line 1"],
        ),
        (
            "unknown-field",
            r#"{"algorithm": "vpg", "logits": [[0, 1]], "rewards": [[0, 1]], "lr": 1}"#,
            vec!["line 1", "lr"],
        ),
        (
            "ragged",
            r#"{"algorithm": "vpg", "logits": [[0, 1], [0]], "rewards": [[0, 1], [0, 1]]}"#,
            vec!["line 1", "logits[1]"],
        ),
        (
            "one-action",
            r#"{"algorithm": "vpg", "logits": [[0]], "rewards": [[0]]}"#,
            vec!["line 1", "logits[0]"],
        ),
        (
            "sample-out-of-range",
            r#"{"algorithm": "vpg", "logits": [[0, 1]], "rewards": [[0, 1]], "samples": [{"x": 0, "y1": 0, "y2": 5}]}"#,
            vec!["line 1", "samples"],
        ),
        (
            "epsilon-negative",
            r#"{"algorithm": "p3o-v1", "logits": [[0, 1]], "rewards": [[0, 1]], "epsilon": -1}"#,
            vec!["line 1", "epsilon"],
        ),
        (
            "value-not-ppo",
            r#"{"algorithm": "vpg", "logits": [[0, 1]], "rewards": [[0, 1]], "value": [0]}"#,
            vec!["line 1", "value"],
        ),
        (
            "rewards-missing",
            r#"{"algorithm": "vpg", "logits": [[0, 1]]}"#,
            vec!["line 1", "rewards"],
        ),
        (
            "algorithm-unknown",
            r#"{"algorithm": "trpo", "logits": [[0, 1]], "rewards": [[0, 1]]}"#,
            vec!["line 1", "algorithm"],
        ),
        (
            "exact-too-large",
            &format!(
                "{{\"algorithm\": \"vpg\", \"logits\": [{:?}], \"rewards\": [{:?}]}}",
                vec![0.0; 9000],
                vec![0.0; 9000]
            ),
            vec!["line 1", "samples"],
        ),
        (
            "second-line-bad",
            "{\"algorithm\": \"vpg\", \"logits\": [[0, 1]], \"rewards\": [[0, 1]]}\n{\"algorithm\": 3}",
            vec!["line 2", "algorithm"],
        ),
    ] {
        cases.push(case(
            format!("reference-{name}"),
            &["reference"],
            input,
            refused(&needles),
            nothing,
        ));
    }
    // p3o eval and compare.
    let e = [
        "--reference",
        m.as_str(),
        "--reward",
        "builtin:vowels",
        "--prompts",
        "builtin",
        "--samples",
        "1",
        "--max-new-tokens",
        "2",
    ];
    let a_policy = format!("a={m}");
    for command in ["eval", "compare"] {
        for (name, extra, needles) in [
            (
                "same-name",
                vec!["--policy", a_policy.as_str(), "--policy", a_policy.as_str()],
                vec!["`a`", "twice"],
            ),
            ("empty-name", vec!["--policy", "=x"], vec!["--policy", "=x"]),
            ("empty-dir", vec!["--policy", "a="], vec!["--policy", "a="]),
            (
                "policy-missing",
                vec!["--policy", "nowhere"],
                vec!["nowhere"],
            ),
            (
                "samples-zero",
                vec!["--policy", m.as_str(), "--samples", "0"],
                vec!["--samples"],
            ),
            (
                "temperature-negative",
                vec!["--policy", m.as_str(), "--temperature=-2"],
                vec!["--temperature"],
            ),
            (
                "reward-missing",
                vec!["--policy", m.as_str(), "--reward", "noreward"],
                vec!["noreward"],
            ),
            (
                "prompts-missing",
                vec!["--policy", m.as_str(), "--prompts", "none.jsonl"],
                vec!["none.jsonl"],
            ),
            (
                "new-tokens-overflowing",
                vec![
                    "--policy",
                    m.as_str(),
                    "--max-new-tokens",
                    "9223372036854775807",
                ],
                vec!["--max-new-tokens"],
            ),
            (
                "samples-huge",
                vec!["--policy", m.as_str(), "--samples", "1000000000000000000"],
                vec!["--samples"],
            ),
            (
                "temperature-tiny",
                vec!["--policy", m.as_str(), "--temperature", "1e-40"],
                vec!["--temperature"],
            ),
            (
                "other-vocabulary",
                vec!["--policy", "p"],
                vec!["--policy p", "another vocabulary"],
            ),
        ] {
            // The case's own --reward or --prompts replaces the default.
            let mut args: Vec<&str> = vec![command];
            let mut rest = e.iter().copied();
            while let Some(flag) = rest.next() {
                let value = rest.next().unwrap();
                if !extra.contains(&flag) {
                    args.extend([flag, value]);
                }
            }
            args.extend(extra);
            cases.push(case(
                format!("{command}-{name}"),
                &args,
                "",
                refused(&needles),
                other_vocabulary,
            ));
        }
    }
    let _ = run_all("flags", cases, 80);
}

/// `dir/p`: the `neox-serial` fixture with two tokens' ids swapped in its
/// tokenizer: the same `vocab_size`, another vocabulary.
fn other_vocabulary(dir: &Path) {
    let p = dir.join("p");
    copy_dir(&fixture("neox-serial"), &p);
    let path = p.join("tokenizer.json");
    let mut t: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let vocab = t["model"]["vocab"].as_object_mut().unwrap();
    let (a, b) = ("a".to_string(), "b".to_string());
    let (ia, ib) = (vocab[&a].clone(), vocab[&b].clone());
    vocab.insert(a, ib);
    vocab.insert(b, ia);
    std::fs::write(&path, serde_json::to_string(&t).unwrap()).unwrap();
}

// ---------------------------------------------------------------------
// Configs and data files of train, sft and reward-model train.

#[test]
fn files() {
    let mut cases: Vec<Case> = Vec::new();
    let train = |sets: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "train",
            "--out",
            "out",
            "--set",
            "steps=1",
            "--set",
            "max_new_tokens=4",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for s in sets {
            v.push("--set".into());
            v.push(s.to_string());
        }
        v
    };
    let serial = fixture("neox-serial").display().to_string();
    let reward = fixture("neox-reward").display().to_string();
    let vocab_reward = format!("reward={reward}");
    let vocab_reference = format!("reference={serial}");
    for (name, sets, needles) in [
        ("unknown-key", vec!["nope=1"], vec!["config key `nope`"]),
        (
            "algorithm-unknown",
            vec!["algorithm=trpo"],
            vec!["config key `algorithm`", "trpo"],
        ),
        ("lr-negative", vec!["lr=-1"], vec!["config key `lr`"]),
        ("lr-nan", vec!["lr=nan"], vec!["config key `lr`"]),
        ("steps-zero", vec!["steps=0"], vec!["config key `steps`"]),
        (
            "steps-negative",
            vec!["steps=-1"],
            vec!["config key `steps`"],
        ),
        (
            "epsilon-zero",
            vec!["epsilon=0"],
            vec!["config key `epsilon`"],
        ),
        (
            "top-p-above-one",
            vec!["top_p=2"],
            vec!["config key `top_p`"],
        ),
        ("top-k-zero", vec!["top_k=0"], vec!["config key `top_k`"]),
        (
            "temperature-negative",
            vec!["temperature=-1"],
            vec!["config key `temperature`"],
        ),
        (
            "gamma-above-one",
            vec!["gamma=2"],
            vec!["config key `gamma`"],
        ),
        (
            "device-absent",
            vec!["device=\"cuda:99\""],
            vec!["config key `device`"],
        ),
        (
            "kernels-on-cpu",
            vec!["kernels=\"cuda\""],
            vec!["config key `kernels`"],
        ),
        (
            "dtype-unknown",
            vec!["dtype=\"f8\""],
            vec!["config key `dtype`"],
        ),
        (
            "batch-zero",
            vec!["batch_size=0"],
            vec!["config key `batch_size`"],
        ),
        (
            "minibatch-zero",
            vec!["minibatch_size=0"],
            vec!["config key `minibatch_size`"],
        ),
        (
            "new-tokens-zero",
            vec!["max_new_tokens=0"],
            vec!["config key `max_new_tokens`"],
        ),
        ("set-without-value", vec!["steps"], vec!["--set `steps`"]),
        ("policy-missing", vec!["policy=nowhere"], vec!["nowhere"]),
        (
            "reward-missing",
            vec!["reward=noreward"],
            vec!["config key `reward`", "noreward"],
        ),
        (
            "prompts-missing",
            vec!["prompts=none.jsonl"],
            vec!["none.jsonl"],
        ),
        (
            "reward-other-vocabulary",
            vec![vocab_reward.as_str()],
            vec!["config key `reward`", "vocab_size"],
        ),
        (
            "reference-other-vocabulary",
            vec![vocab_reference.as_str()],
            vec!["config key `reference`", "vocab_size"],
        ),
        (
            "prompt-beyond-positions",
            vec!["max_new_tokens=1000"],
            vec!["positions"],
        ),
        (
            "new-tokens-overflowing",
            vec!["max_new_tokens=9223372036854775807"],
            vec!["config key `max_new_tokens`"],
        ),
        (
            "temperature-tiny",
            vec!["temperature=1e-40"],
            vec!["config key `temperature`"],
        ),
        (
            "temperature-greedy-pairs",
            vec!["temperature=0"],
            vec!["config key `temperature`", "p3o-v2"],
        ),
        (
            "top-k-one-pairs",
            vec!["algorithm=dpo", "top_k=1"],
            vec!["config key `top_k`", "dpo"],
        ),
        (
            "threads-huge",
            vec!["threads=4294967296"],
            vec!["config key `threads`"],
        ),
        (
            "eval-samples-huge",
            vec!["eval_samples=1000000000000000000"],
            vec!["config key `eval_samples`"],
        ),
        (
            "batch-huge",
            vec!["batch_size=1000000000000"],
            vec!["config key `batch_size`"],
        ),
        (
            "max-nonfinite-zero",
            vec!["max_nonfinite=0"],
            vec!["config key `max_nonfinite`"],
        ),
        (
            "steps-huge",
            vec!["steps=100000000000000"],
            vec!["config key `steps`"],
        ),
    ] {
        let args = train(&sets);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cases.push(case(
            format!("train-{name}"),
            &args,
            "",
            refused(&needles),
            nothing,
        ));
    }
    for (name, toml, needles) in [
        ("toml-syntax", "steps = 1\nlr = \n", vec!["cfg.toml line 2"]),
        (
            "toml-duplicate",
            "steps = 1\nsteps = 2\n",
            vec!["cfg.toml line 2"],
        ),
        (
            "toml-type",
            "steps = \"many\"\n",
            vec!["config key `steps`"],
        ),
        (
            "toml-unknown",
            "[section]\nx = 1\n",
            vec!["config key `section`"],
        ),
    ] {
        cases.push(case(
            format!("train-{name}"),
            &["train", "--out", "out", "--config", "cfg.toml"],
            "",
            refused(&needles),
            move |d: &Path| std::fs::write(d.join("cfg.toml"), toml).unwrap(),
        ));
    }
    cases.push(case(
        "train-config-missing",
        &["train", "--out", "out", "--config", "none.toml"],
        "",
        refused(&["none.toml"]),
        nothing,
    ));
    // Prompt files, for train's `prompts` and `eval_prompts`.
    let long_prompt = format!("{{\"prompt\": \"{}\"}}", "the quick brown fox ".repeat(25));
    let prompt_files: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "not-utf8",
            b"{\"prompt\": \"a\"}\n{\"prompt\": \"\xff\xfe\"}\n".to_vec(),
            vec!["p.jsonl line 2", "UTF-8"],
        ),
        (
            "duplicate-key",
            b"{\"prompt\": \"a\", \"prompt\": \"b\"}\n".to_vec(),
            vec!["p.jsonl line 1", "duplicate key"],
        ),
        (
            "malformed",
            b"{\"prompt\": \"a\"}\n\n{\"prompt\": \n".to_vec(),
            vec!["p.jsonl line 3"],
        ),
        (
            "field-missing",
            b"{\"text\": \"a\"}\n".to_vec(),
            vec!["p.jsonl line 1"],
        ),
        (
            "field-not-string",
            b"{\"prompt\": 3}\n".to_vec(),
            vec!["p.jsonl line 1"],
        ),
        ("empty", b"\n\n".to_vec(), vec!["p.jsonl"]),
        (
            "too-long",
            format!("{{\"prompt\": \"a\"}}\n{long_prompt}\n").into_bytes(),
            vec!["p.jsonl line 2", "positions"],
        ),
        (
            "empty-prompt",
            b"{\"prompt\": \"a\"}\n{\"prompt\": \"\"}\n".to_vec(),
            vec!["p.jsonl line 2"],
        ),
    ];
    for (name, bytes, needles) in prompt_files {
        let b2 = bytes.clone();
        let policy = format!("policy={serial}");
        let args = train(&[policy.as_str(), "prompts=p.jsonl"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cases.push(case(
            format!("prompts-{name}"),
            &args,
            "",
            refused(&needles),
            move |d: &Path| std::fs::write(d.join("p.jsonl"), &bytes).unwrap(),
        ));
        let args = train(&[policy.as_str(), "prompts=builtin", "eval_prompts=p.jsonl"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cases.push(case(
            format!("eval-prompts-{name}"),
            &args,
            "",
            refused(&needles),
            move |d: &Path| std::fs::write(d.join("p.jsonl"), &b2).unwrap(),
        ));
    }
    cases.push(case(
        "prompts-directory",
        &train(&["prompts=pdir"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "",
        refused(&["pdir"]),
        |d: &Path| std::fs::create_dir_all(d.join("pdir")).unwrap(),
    ));
    // SFT data and preference pairs.
    let long_response = "word ".repeat(100);
    let sft_files: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        ("not-utf8", b"{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": \"\xff\", \"response\": \"b\"}\n".to_vec(), vec!["s.jsonl line 2", "UTF-8"]),
        ("duplicate-key", b"{\"prompt\": \"a\", \"response\": \"b\", \"response\": \"c\"}\n".to_vec(), vec!["s.jsonl line 1", "duplicate key"]),
        ("malformed", b"{\"prompt\": \"a\", \"response\": \"b\"}\n{\n".to_vec(), vec!["s.jsonl line 2"]),
        ("field-missing", b"{\"prompt\": \"a\"}\n".to_vec(), vec!["s.jsonl line 1", "response"]),
        ("too-long", format!("{{\"prompt\": \"a\", \"response\": \"b\"}}\n\n{{\"prompt\": \"a\", \"response\": \"{long_response}\"}}\n").into_bytes(), vec!["s.jsonl line 3", "positions"]),
    ];
    for (name, bytes, needles) in sft_files {
        let base = format!("base={serial}");
        cases.push(case(
            format!("sft-{name}"),
            &[
                "sft",
                "--out",
                "out",
                "--set",
                &base,
                "--set",
                "data=s.jsonl",
                "--set",
                "steps=1",
            ],
            "",
            refused(&needles),
            move |d: &Path| std::fs::write(d.join("s.jsonl"), &bytes).unwrap(),
        ));
    }
    let pref_files: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        ("not-utf8", b"{\"chosen\": \"a\", \"rejected\": \"b\"}\n{\"chosen\": \"\xff\", \"rejected\": \"b\"}\n".to_vec(), vec!["q.jsonl line 2", "UTF-8"]),
        ("duplicate-key", b"{\"chosen\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n".to_vec(), vec!["q.jsonl line 1", "duplicate key"]),
        ("malformed", b"{\"chosen\": \"a\", \"rejected\": \"b\"}\n[\n".to_vec(), vec!["q.jsonl line 2"]),
        ("field-missing", b"{\"chosen\": \"a\"}\n".to_vec(), vec!["q.jsonl line 1", "rejected"]),
        ("too-long", format!("{{\"chosen\": \"a\", \"rejected\": \"b\"}}\n{{\"chosen\": \"{long_response}\", \"rejected\": \"b\"}}\n").into_bytes(), vec!["q.jsonl line 2", "chosen"]),
        ("empty-text", b"{\"chosen\": \"a\", \"rejected\": \"b\"}\n{\"chosen\": \"\", \"rejected\": \"b\"}\n".to_vec(), vec!["q.jsonl line 2", "chosen"]),
    ];
    for (name, bytes, needles) in pref_files {
        cases.push(case(
            format!("reward-model-{name}"),
            &[
                "reward-model",
                "train",
                "--base",
                &serial,
                "--data",
                "q.jsonl",
                "--out",
                "out",
            ],
            "",
            refused(&needles),
            move |d: &Path| std::fs::write(d.join("q.jsonl"), &bytes).unwrap(),
        ));
    }
    for (name, sets, needles) in [
        (
            "sft-unknown-key",
            vec!["sft", "--out", "out", "--set", "epochs=3"],
            vec!["config key `epochs`"],
        ),
        (
            "sft-lr-negative",
            vec!["sft", "--out", "out", "--set", "lr=-1"],
            vec!["config key `lr`"],
        ),
        (
            "sft-heldout-one",
            vec!["sft", "--out", "out", "--set", "heldout_fraction=1"],
            vec!["config key `heldout_fraction`"],
        ),
        (
            "sft-device",
            vec!["sft", "--out", "out", "--set", "device=\"cuda:99\""],
            vec!["config key `device`"],
        ),
        (
            "reward-model-no-data",
            vec![
                "reward-model",
                "train",
                "--base",
                "builtin:tiny-neox",
                "--out",
                "out",
            ],
            vec!["--data"],
        ),
        (
            "reward-model-epochs-zero",
            vec![
                "reward-model",
                "train",
                "--base",
                &reward,
                "--data",
                "q.jsonl",
                "--out",
                "out",
                "--set",
                "epochs=0",
            ],
            vec!["config key `epochs`"],
        ),
        (
            "demo-algorithms-unquoted",
            vec![
                "demo",
                "--quick",
                "--out",
                "out",
                "--set",
                "algorithms=[p3o-v1, x]",
            ],
            vec!["config key `algorithms`"],
        ),
        (
            "demo-algorithm-unknown",
            vec![
                "demo",
                "--quick",
                "--out",
                "out",
                "--set",
                "algorithms=[\"p3o-v1\", \"x\"]",
            ],
            vec!["config key `algorithms[1]`"],
        ),
        (
            "demo-device",
            vec![
                "demo",
                "--quick",
                "--out",
                "out",
                "--set",
                "device=\"cuda:99\"",
            ],
            vec!["config key `device`"],
        ),
        (
            "demo-rl-steps-zero",
            vec!["demo", "--quick", "--out", "out", "--set", "rl_steps=0"],
            vec!["config key `rl_steps`"],
        ),
        (
            "demo-sft-batch-zero",
            vec![
                "demo",
                "--quick",
                "--out",
                "out",
                "--set",
                "sft_batch_size=0",
            ],
            vec!["config key `sft_batch_size`"],
        ),
        (
            "demo-rm-epochs-zero",
            vec!["demo", "--quick", "--out", "out", "--set", "rm_epochs=0"],
            vec!["config key `rm_epochs`"],
        ),
        (
            "demo-sft-lr-negative",
            vec!["demo", "--quick", "--out", "out", "--set", "sft_lr=-1"],
            vec!["config key `sft_lr`"],
        ),
        (
            "demo-algorithm-twice",
            vec![
                "demo",
                "--quick",
                "--out",
                "out",
                "--set",
                "algorithms=[\"dpo\", \"dpo\"]",
            ],
            vec!["config key `algorithms`", "twice"],
        ),
        (
            "demo-new-tokens-beyond-positions",
            vec![
                "demo",
                "--quick",
                "--out",
                "out",
                "--set",
                "max_new_tokens=200",
            ],
            vec!["config key `max_new_tokens`"],
        ),
        (
            "demo-threads-huge",
            vec![
                "demo",
                "--quick",
                "--out",
                "out",
                "--set",
                "threads=4294967296",
            ],
            vec!["config key `threads`"],
        ),
        (
            "sft-threads-huge",
            vec!["sft", "--out", "out", "--set", "threads=4294967296"],
            vec!["config key `threads`"],
        ),
        (
            "sft-weight-decay-nan",
            vec!["sft", "--out", "out", "--set", "weight_decay=nan"],
            vec!["config key `weight_decay`"],
        ),
        (
            "reward-model-grad-norm-negative",
            vec![
                "reward-model",
                "train",
                "--base",
                "builtin:tiny-neox",
                "--data",
                "q.jsonl",
                "--out",
                "out",
                "--set",
                "max_grad_norm=-1",
            ],
            vec!["config key `max_grad_norm`"],
        ),
        (
            "train-reference-with-fewer-positions",
            vec![
                "train",
                "--out",
                "out",
                "--set",
                "policy=p",
                "--set",
                "reference=r",
                "--set",
                "prompts=builtin",
                "--set",
                "max_new_tokens=14",
            ],
            vec!["config key `reference`", "positions"],
        ),
    ] {
        cases.push(case(name, &sets, "", refused(&needles), |d: &Path| {
            std::fs::write(d.join("q.jsonl"), PREFS).unwrap();
            // A policy and a reference of the same vocabulary, the
            // reference holding 16 positions (GPT-NeoX's rotary tables
            // need no weights for them).
            copy_dir(&fixture("neox-serial"), &d.join("p"));
            copy_dir(&fixture("neox-serial"), &d.join("r"));
            let path = d.join("r/config.json");
            let mut cfg: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            cfg["max_position_embeddings"] = json!(16);
            std::fs::write(&path, cfg.to_string()).unwrap();
        }));
    }
    let _ = run_all("files", cases, 60);
}

// ---------------------------------------------------------------------
// Output directories, resuming and checkpoints.

const SMALL: [&str; 12] = [
    "--set",
    "steps=3",
    "--set",
    "batch_size=4",
    "--set",
    "minibatch_size=2",
    "--set",
    "max_new_tokens=6",
    "--set",
    "checkpoint_every=2",
    "--set",
    "eval_every=2",
];

/// One finished 3-step run with a checkpoint at step 2, made once.
fn finished_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = root().join("finished-run");
        let _ = std::fs::remove_dir_all(&dir);
        let st = Command::new(env!("CARGO_BIN_EXE_p3o"))
            .args(["train", "--out"])
            .arg(&dir)
            .args(SMALL)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "the base run trains");
        dir
    })
}

fn with_run(
    edit: impl Fn(&Path) + Send + Sync + 'static,
) -> impl Fn(&Path) + Send + Sync + 'static {
    move |d: &Path| {
        copy_dir(finished_run(), &d.join("out"));
        edit(&d.join("out"));
    }
}

fn edit_state(
    edit: impl Fn(&mut Value) + Send + Sync + 'static,
) -> impl Fn(&Path) + Send + Sync + 'static {
    with_run(move |out: &Path| {
        let path = out.join("checkpoints/step-2/state.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    })
}

#[test]
fn runs() {
    let small: Vec<&str> = SMALL.to_vec();
    let train = |extra: &[&str]| -> Vec<String> {
        ["train", "--out", "out"]
            .iter()
            .chain(&small)
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let mut cases: Vec<Case> = Vec::new();
    let mut push =
        |name: &str, args: Vec<String>, expect: Expect, setup: Box<dyn Fn(&Path) + Send + Sync>| {
            cases.push(Case {
                name: name.into(),
                args,
                stdin: String::new(),
                expect,
                setup,
            });
        };
    push(
        "out-is-a-file",
        train(&[]),
        refused(&["out", "not a directory"]),
        Box::new(|d: &Path| std::fs::write(d.join("out"), "x").unwrap()),
    );
    push(
        "out-holds-a-run",
        train(&[]),
        refused(&["out", "not empty", "--resume"]),
        Box::new(with_run(|_| {})),
    );
    push(
        "out-holds-a-run-without-metrics",
        train(&[]),
        refused(&["not empty"]),
        Box::new(with_run(|o| {
            std::fs::remove_file(o.join("metrics.jsonl")).unwrap()
        })),
    );
    push(
        "out-holds-other-files",
        train(&[]),
        refused(&["not empty", "notes.txt"]),
        Box::new(|d: &Path| {
            std::fs::create_dir_all(d.join("out")).unwrap();
            std::fs::write(d.join("out/notes.txt"), "mine").unwrap();
        }),
    );
    push(
        "resume-without-checkpoint",
        train(&["--resume"]),
        refused(&["no complete checkpoint"]),
        Box::new(with_run(|o| {
            std::fs::remove_dir_all(o.join("checkpoints")).unwrap()
        })),
    );
    push(
        "resume-only-a-torn-checkpoint",
        train(&["--resume"]),
        refused(&["no complete checkpoint"]),
        Box::new(with_run(|o| {
            std::fs::remove_file(o.join("checkpoints/step-2/state.json")).unwrap()
        })),
    );
    push(
        "resume-fewer-steps",
        train(&["--set", "steps=1", "--resume"]),
        refused(&["config key `steps`", "step 2"]),
        Box::new(with_run(|_| {})),
    );
    push(
        "resume-other-lr",
        train(&["--set", "lr=0.5", "--resume"]),
        refused(&["config key `lr`", "state.json"]),
        Box::new(with_run(|_| {})),
    );
    push(
        "resume-other-algorithm",
        train(&["--set", "algorithm=dpo", "--resume"]),
        refused(&["config key `algorithm`"]),
        Box::new(with_run(|_| {})),
    );
    push(
        "resume-other-seed",
        train(&["--set", "seed=9", "--resume"]),
        refused(&["config key `seed`"]),
        Box::new(with_run(|_| {})),
    );
    push(
        "resume-state-empty",
        train(&["--resume"]),
        refused(&["step-2/state.json"]),
        Box::new(with_run(|o| {
            std::fs::write(o.join("checkpoints/step-2/state.json"), "{}").unwrap()
        })),
    );
    push(
        "resume-state-malformed",
        train(&["--resume"]),
        refused(&["step-2/state.json"]),
        Box::new(with_run(|o| {
            std::fs::write(o.join("checkpoints/step-2/state.json"), "{\"step\": ").unwrap()
        })),
    );
    push(
        "resume-state-duplicate",
        train(&["--resume"]),
        refused(&["step-2/state.json", "duplicate key"]),
        Box::new(with_run(|o| {
            let path = o.join("checkpoints/step-2/state.json");
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replacen("{", "{\"step\": 2,", 1);
            std::fs::write(&path, text).unwrap();
        })),
    );
    push(
        "resume-state-wrong-step",
        train(&["--resume"]),
        refused(&["state.json", "step 7"]),
        Box::new(edit_state(|v| v["step"] = json!(7))),
    );
    push(
        "resume-state-negative-optimizer",
        train(&["--resume"]),
        refused(&["state.json", "optimizer_step"]),
        Box::new(edit_state(|v| v["optimizer_step"] = json!(-4))),
    );
    push(
        "resume-state-nonfinite-counts",
        train(&["--resume"]),
        refused(&["state.json", "nonfinite_in_row"]),
        Box::new(edit_state(|v| {
            v["nonfinite_in_row"] = json!(3);
            v["nonfinite_total"] = json!(1);
        })),
    );
    push(
        "resume-optimizer-truncated",
        train(&["--set", "steps=4", "--resume"]),
        refused(&["optimizer.safetensors"]),
        Box::new(with_run(|o| {
            let f = o.join("checkpoints/step-2/optimizer.safetensors");
            let b = std::fs::read(&f).unwrap();
            std::fs::write(&f, &b[..b.len() / 3]).unwrap();
        })),
    );
    push(
        "resume-weights-corrupt",
        train(&["--set", "steps=4", "--resume"]),
        refused(&["model.safetensors"]),
        Box::new(with_run(|o| {
            std::fs::write(
                o.join("checkpoints/step-2/model.safetensors"),
                "not tensors",
            )
            .unwrap()
        })),
    );
    push(
        "resume-metrics-corrupt",
        train(&["--set", "steps=4", "--resume"]),
        refused(&["metrics.jsonl", "line 1"]),
        Box::new(with_run(|o| {
            let path = o.join("metrics.jsonl");
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, format!("{{\"garbage\": 1}}\n{text}")).unwrap();
        })),
    );
    // A finished run has nothing to resume: its checkpoints are not read.
    push(
        "resume-complete-run-with-a-corrupt-checkpoint",
        train(&["--resume"]),
        Expect::Unchanged,
        Box::new(with_run(|o| {
            std::fs::write(o.join("checkpoints/step-2/model.safetensors"), "x").unwrap()
        })),
    );
    push(
        "resume-complete-run",
        train(&["--resume"]),
        Expect::Unchanged,
        Box::new(with_run(|_| {})),
    );
    push(
        "resume-killed-before-first-checkpoint",
        train(&["--resume"]),
        Expect::Accepted,
        Box::new(with_run(|o| {
            std::fs::remove_dir_all(o.join("final")).unwrap();
            std::fs::remove_dir_all(o.join("checkpoints")).unwrap();
        })),
    );
    push(
        "resume-into-nothing",
        train(&["--resume"]),
        Expect::Accepted,
        Box::new(nothing),
    );
    for (command, args) in [
        ("sft", vec!["sft", "--out", "out", "--set", "steps=1"]),
        (
            "reward-model",
            vec![
                "reward-model",
                "train",
                "--base",
                "builtin:tiny-neox",
                "--data",
                "q.jsonl",
                "--out",
                "out",
            ],
        ),
        ("demo", vec!["demo", "--quick", "--out", "out"]),
    ] {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        push(
            &format!("{command}-out-holds-a-run"),
            args.clone(),
            refused(&["not empty"]),
            Box::new(with_run(|o| {
                std::fs::write(o.parent().unwrap().join("q.jsonl"), PREFS).unwrap()
            })),
        );
        push(
            &format!("{command}-out-is-a-file"),
            args,
            refused(&["not a directory"]),
            Box::new(|d: &Path| {
                std::fs::write(d.join("out"), "x").unwrap();
                std::fs::write(d.join("q.jsonl"), PREFS).unwrap();
            }),
        );
    }
    let _ = run_all("runs", cases, 25);
}
