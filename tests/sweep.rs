//! `p3o sweep` end to end on CPU ([C-SWEEP]): the quick sweep CI runs
//! writes every section and figure; a sweep killed with SIGKILL and
//! started again ends with the results of one never interrupted; another
//! configuration on the same directory is refused.
#![cfg(feature = "torch")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::run_p3o;

/// The tests of this file run one at a time (each keeps both cores busy).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn tmp(name: &str) -> PathBuf {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sweep-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// spec: C-SWEEP C-STATS
#[test]
fn quick_sweep_writes_every_section() {
    let _guard = serial();
    let out = tmp("quick");
    let o = run_p3o(&["sweep", "--quick", "--out", out.to_str().unwrap()], "");
    assert!(o.status.success(), "{}", stderr(&o));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for section in [
        "## The pipeline per seed",
        "## The proxy reward",
        "## The gold reward",
        "### Binned frontier",
        "### Envelope means",
        "### Paired differences",
        "### KL spent for P3O-V2's reward",
        "### Win rates of the final policies",
    ] {
        assert!(report.contains(section), "missing {section}:\n{report}");
    }
    for arm in [
        "p3o-v1",
        "p3o-v2",
        "p3o-v2-g4",
        "ppo",
        "dpo",
        "rloo-g4",
        "grpo-g4",
    ] {
        assert!(report.contains(&format!("| {arm} |")), "no row for {arm}");
        assert!(
            report.contains(&format!("| p3o-v2 - {arm} |")) || arm == "p3o-v2",
            "no pair with {arm}"
        );
    }
    for stem in [
        "frontier_proxy",
        "frontier_gold",
        "forest_proxy",
        "forest_gold",
    ] {
        for ext in ["png", "svg"] {
            let f = out.join(format!("{stem}.{ext}"));
            assert!(
                std::fs::metadata(&f).unwrap().len() > 1000,
                "{}",
                f.display()
            );
        }
    }
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["seeds"].as_array().unwrap().len(), 2);
    assert_eq!(results["runs"].as_array().unwrap().len(), 14);
    // Every paired difference covers both seeds.
    for p in results["analysis"]["paired"].as_array().unwrap() {
        assert_eq!(p["differences"].as_array().unwrap().len(), 2, "{p}");
    }
}

/// The tiny sweep of the resumption test: two seeds, two arms, two
/// coefficients, a few steps each.
fn tiny_args(out: &Path) -> Vec<String> {
    let mut v: Vec<String> = [
        "sweep", "--quick", "--seeds", "2", "--betas", "0.05,0.2", "--out",
    ]
    .map(String::from)
    .to_vec();
    v.push(out.display().to_string());
    for s in [
        "corpus_size=256",
        "sft_steps=20",
        "preference_pairs=128",
        "rm_epochs=1",
        "rl_steps=6",
        "rl_batch_size=4",
        "rl_minibatch_size=2",
        "max_new_tokens=8",
        "eval_every=2",
        "algorithms=[\"p3o-v2\", \"ppo\"]",
    ] {
        v.push("--set".into());
        v.push(s.into());
    }
    v
}

/// results.json without wall times and with the output directory's name
/// replaced, so that two directories' results compare.
fn comparable(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("results.json"))
        .unwrap()
        .replace(out.to_str().unwrap(), "$OUT");
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for list in ["seeds", "runs"] {
        for r in v[list].as_array_mut().unwrap() {
            r.as_object_mut().unwrap().remove("seconds");
        }
    }
    v
}

// spec: C-SWEEP
#[test]
fn killed_sweep_resumes_to_the_same_results() {
    let _guard = serial();
    let whole = tmp("whole");
    let o = run_p3o(
        &tiny_args(&whole)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "",
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // Killed once the first run of seed 0 is done and the next has begun.
    let killed = tmp("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_p3o"))
        .args(tiny_args(&killed))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = killed.join("seed-0/beta-0.05/p3o-v2.json");
    let next = killed.join("seed-0/beta-0.05/ppo/metrics.jsonl");
    let t = Instant::now();
    while !(first.is_file() && next.is_file()) {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the sweep made no run"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the sweep ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!killed.join("results.json").exists());
    let before = std::fs::metadata(&first).unwrap().modified().unwrap();

    let o = run_p3o(
        &tiny_args(&killed)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("(resuming)") && err.contains("done before, kept"),
        "{err}"
    );
    // The finished unit was kept, not redone.
    assert_eq!(
        std::fs::metadata(&first).unwrap().modified().unwrap(),
        before
    );
    assert_eq!(comparable(&whole), comparable(&killed));
    assert_eq!(
        std::fs::read_to_string(whole.join("report.md"))
            .unwrap()
            .lines()
            .filter(|l| !l.contains("Compute time"))
            .collect::<Vec<_>>(),
        std::fs::read_to_string(killed.join("report.md"))
            .unwrap()
            .lines()
            .filter(|l| !l.contains("Compute time"))
            .collect::<Vec<_>>()
    );

    // Another configuration on the same directory is refused, naming the
    // key, and nothing there changes.
    let mut other = tiny_args(&killed);
    other[3] = "3".into();
    let o = run_p3o(&other.iter().map(String::as_str).collect::<Vec<_>>(), "");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("another configuration") && err.contains("seeds"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(comparable(&whole), comparable(&killed));
}

/// Bad flags answer one line and exit status 2, before anything is written.
#[test]
fn bad_sweep_flags_are_refused() {
    let _guard = serial();
    let out = tmp("bad");
    for (args, want) in [
        (vec!["--betas", "0.1,0.1"], "named twice"),
        (vec!["--betas=-1"], "--betas"),
        (vec!["--kl-bins", "0,2,1"], "increase"),
        (vec!["--kl-budgets", "0"], "--kl-budgets"),
        (vec!["--seeds", "0"], "--seeds"),
        (vec!["--set", "rl_steps=0"], "rl_steps"),
        (vec!["--set", "algorithms=[\"nope\"]"], "nope"),
    ] {
        let mut a = vec!["sweep", "--quick", "--out", out.to_str().unwrap()];
        a.extend(args.iter());
        let o = run_p3o(&a, "");
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}
