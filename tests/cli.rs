//! The `p3o` binary: the reference schema, its error messages, and the
//! bandit summary.

mod common;

use common::run_p3o as p3o;

use p3o::case::parse_case;
use p3o::reference::evaluate;

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Each output line is the library's evaluation of the case, with the
/// schema's defaults (`logits_old = logits`, `logits_ref = logits_old`,
/// beta 0, epsilon 0.2, vf_coef 1, exact mode without samples).
// spec: C-CLI-REFERENCE
#[test]
fn reference_lines_match_the_library() {
    let cases = [
        r#"{"algorithm":"p3o-v1","logits":[[0.1,0.5,-0.3],[1,0,0]],"logits_old":[[0,0.2,0],[0.5,0,0.1]],"rewards":[[1,2,3],[0,-1,4]],"beta":0.1,"samples":[{"x":0,"y1":0,"y2":2},{"x":1,"y1":1,"y2":2}]}"#,
        r#"{"algorithm":"p3o-v2","logits":[[0.1,0.5,-0.3]],"rewards":[[1,2,3]],"epsilon":"inf"}"#,
        r#"{"algorithm":"ppo","logits":[[0.1,0.5],[0,0]],"rewards":[[1,2],[3,4]],"value":[0.5,-1],"vf_coef":0.5,"samples":[{"x":1,"y1":0,"y2":1}]}"#,
        r#"{"algorithm":"dpo","logits":[[0.1,0.5]],"logits_ref":[[0,0]],"rewards":[[1,2]],"beta":0.5}"#,
        r#"{"algorithm":"vpg","logits":[[0.1,0.5]],"rewards":[[1,2]]}"#,
        r#"{"algorithm":"ppg","logits":[[0.1,0.5]],"rewards":[[1,2]]}"#,
    ];
    let out = p3o(&["reference"], &(cases.join("\n") + "\n\n"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), cases.len());
    for (case, line) in cases.iter().zip(&lines) {
        let c = parse_case(case).unwrap();
        let ev = evaluate(c.algorithm, &c.hyper, &c.problem, &c.batch);
        assert_eq!(line["loss"].as_f64().unwrap(), ev.loss);
        let grad: Vec<f64> = line["grad"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
            .collect();
        assert_eq!(grad, ev.grad.iter().copied().collect::<Vec<_>>());
        assert_eq!(line.get("grad_value").is_some(), c.algorithm.uses_value());
    }
    let c = parse_case(cases[3]).unwrap();
    assert_eq!(c.hyper.epsilon, 0.2);
    assert_eq!(c.problem.logits_old, c.problem.logits);
    assert_eq!(c.batch, p3o::reference::Batch::Exact);
}

/// Bad input: one line naming the input line and the field, exit status 2,
/// and the results of earlier lines already written.
// spec: C-ERRORS
#[test]
fn reference_errors() {
    let good = r#"{"algorithm":"vpg","logits":[[0,1]],"rewards":[[1,2]]}"#;
    let bad = [
        r#"{"algorithm":"vpg","logits":[[0,1]],"rewards":[[1,2]]"#,
        r#"{"algorithm":"vpg","logits":[[0,1],[0,1,2]],"rewards":[[1,2],[1,2]]}"#,
        r#"{"algorithm":"vpg","logits":[[0,1]],"rewards":[[1,2],[3,4]]}"#,
        r#"{"algorithm":"vpg","logits":[[0]],"rewards":[[1]]}"#,
        r#"{"algorithm":"vpg","logits":[],"rewards":[]}"#,
        r#"{"algorithm":"vpg","logits":[[0,1]],"rewards":[[1,2]],"samples":[{"x":0,"y1":2,"y2":0}]}"#,
        r#"{"algorithm":"vpg","logits":[[0,1]],"rewards":[[1,2]],"samples":[{"x":-1,"y1":0,"y2":0}]}"#,
        r#"{"algorithm":"vpg","logits":[[0,1]],"rewards":[[1,2]],"samples":[]}"#,
        r#"{"algorithm":"vpg","logits":[[0,1]],"rewards":[[1,1e999]]}"#,
        r#"{"algorithm":"vpg","logits":[[0,NaN]],"rewards":[[1,2]]}"#,
        r#"{"algorithm":"vpg","logits":[[0,"NaN"]],"rewards":[[1,2]]}"#,
        r#"{"algorithm":"trpo","logits":[[0,1]],"rewards":[[1,2]]}"#,
        r#"{"algorithm":"ppo","logits":[[0,1]],"rewards":[[1,2]]}"#,
        r#"{"algorithm":"ppo","logits":[[0,1]],"rewards":[[1,2]],"value":[1,2]}"#,
        r#"{"algorithm":"dpo","logits":[[0,1]],"rewards":[[1,2]],"value":[1]}"#,
        r#"{"algorithm":"vpg","logits":[[0,1]],"rewards":[[1,2]],"epsilon":0}"#,
        r#"{"algorithm":"vpg","logits":[[0,1]],"rewards":[[1,2]],"epsilon":"big"}"#,
        r#"{"algorithm":"vpg","logits":[[0,1]],"rewards":[[1,2]],"gamma":0.9}"#,
        r#"{"logits":[[0,1]],"rewards":[[1,2]]}"#,
        r#"[1,2,3]"#,
        r#"{"algorithm":"p3o-v1","logits":[[0,800]],"logits_old":[[0,-800]],"rewards":[[1,2]]}"#,
        r#"{"algorithm":"rloo","logits":[[0,1]],"rewards":[[1,2]],"group_size":1}"#,
        r#"{"algorithm":"rloo","logits":[[0,1]],"rewards":[[1,2]],"group_size":2.5}"#,
        r#"{"algorithm":"rloo","logits":[[0,1]],"rewards":[[1,2]],"group_size":64}"#,
        r#"{"algorithm":"grpo","logits":[[0,1]],"rewards":[[1,2]],"groups":[{"x":0,"ys":[1]}]}"#,
        r#"{"algorithm":"grpo","logits":[[0,1]],"rewards":[[1,2]],"groups":[{"x":0,"ys":[0,2]}]}"#,
        r#"{"algorithm":"grpo","logits":[[0,1]],"rewards":[[1,2]],"groups":[]}"#,
        r#"{"algorithm":"grpo","logits":[[0,1]],"rewards":[[1,2]],"groups":[{"x":0,"ys":[0,1],"w":1}]}"#,
        r#"{"algorithm":"grpo","logits":[[0,1]],"rewards":[[1,2]],"groups":[{"x":0,"ys":[0,1]}],"group_size":2}"#,
        r#"{"algorithm":"grpo","logits":[[0,1]],"rewards":[[1,2]],"scale_rewards":"batch"}"#,
        r#"{"algorithm":"grpo","logits":[[0,1]],"rewards":[[1,2]],"std_eps":-1}"#,
        r#"{"algorithm":"p3o-trlx","logits":[[0,1]],"rewards":[[1,2]],"cliprange_ratio":1}"#,
        r#"{"algorithm":"p3o-trlx","logits":[[0,1]],"rewards":[[1,2]],"cliprange_ratio":"none"}"#,
    ];
    let mut report = String::new();
    for b in bad {
        let out = p3o(&["reference"], &format!("{good}\n{b}\n{good}\n"));
        assert_eq!(out.status.code(), Some(2), "{b}");
        assert_eq!(
            text(&out.stdout).lines().count(),
            1,
            "the first result is written: {b}"
        );
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        report.push_str(&err);
    }
    insta::assert_snapshot!(report);
}

/// The limits of a case at their edges: the exact expectation takes
/// `X K^2 = 2^26` cells and refuses one more row's worth (asking for
/// `samples`), which sampled cases need not; a logits row may span up to
/// float64's largest number, not beyond.
// spec: C-CLI-REFERENCE C-SOFTMAX
#[test]
fn reference_case_limits() {
    let line = |k: usize, extra: &str| {
        format!(
            r#"{{"algorithm": "vpg", "logits": [{:?}], "rewards": [{:?}]{extra}}}"#,
            vec![0.0; k],
            vec![0.0; k]
        )
    };
    assert!(parse_case(&line(8192, "")).is_ok());
    assert_eq!(parse_case(&line(8193, "")).unwrap_err().field, "samples");
    assert!(parse_case(&line(8193, r#", "samples": [{"x": 0, "y1": 0, "y2": 1}]"#)).is_ok());
    // Groups: X K^G G(G-1)/2 cells, so K = 32 takes G = 4 (2^20 groups of 6
    // pairs) and refuses G = 5 (2^25 groups of 10); `groups` need no limit.
    assert!(parse_case(&line(32, r#", "group_size": 4"#)).is_ok());
    assert_eq!(
        parse_case(&line(32, r#", "group_size": 5"#))
            .unwrap_err()
            .field,
        "group_size"
    );
    assert!(
        parse_case(&line(
            32,
            r#", "groups": [{"x": 0, "ys": [0, 1, 2, 3, 4, 5]}]"#
        ))
        .is_ok()
    );
    let spread = |logits: &str, old: &str| {
        parse_case(&format!(
            r#"{{"algorithm": "ppg", "logits": {logits}, "logits_old": {old}, "rewards": [[0, 1]]}}"#
        ))
    };
    let max = f64::MAX;
    assert!(spread(&format!("[[{max:e}, 0]]"), "[[0, 0]]").is_ok());
    assert_eq!(
        spread(&format!("[[{max:e}, -1e300]]"), "[[0, 0]]")
            .unwrap_err()
            .field,
        "logits[0]"
    );
    assert_eq!(
        spread("[[0, 0]]", &format!("[[{max:e}, -{max:e}]]"))
            .unwrap_err()
            .field,
        "logits_old[0]"
    );
}

/// Bad flags of `p3o bandit` are usage errors with exit status 2.
// spec: C-ERRORS
#[test]
fn bandit_flag_errors() {
    for args in [
        &["bandit", "--actions", "1"][..],
        &["bandit", "--reward-shift", "random:-1"],
        &["bandit", "--epsilon", "0"],
        &["bandit", "--lr", "nan"],
        &["bandit", "--group-size", "1"],
        &["bandit", "--group-size", "65"],
        &["bandit", "--frontier", "2", "--betas=-1"],
        &["bandit", "--frontier", "0"],
        &["bandit", "--frontier", "2", "--reward-shift", "const:1"],
    ] {
        let out = p3o(args, "");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!text(&out.stderr).contains("panicked"));
    }
}

/// The summary of a fixed-seed run with a random shift: P3O, DPO, RLOO,
/// GRPO and p3o-trlx trajectories unchanged, PPO's changed.
// spec: C-BANDIT-TRAIN C-THM2 C-PPO-SHIFT C-GROUP-SHIFT
#[test]
fn bandit_summary_snapshot() {
    let out = p3o(
        &[
            "bandit",
            "--seed",
            "3",
            "--steps",
            "20",
            "--reward-shift",
            "random:50:1",
            "--print-every",
            "10",
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    insta::assert_snapshot!(text(&out.stdout));
}

/// JSON Lines output: one line per algorithm, trajectory and step, then one
/// summary line per algorithm.
// spec: C-BANDIT-TRAIN
#[test]
fn bandit_jsonl() {
    let out = p3o(
        &[
            "bandit",
            "--steps",
            "3",
            "--format",
            "jsonl",
            "--reward-shift",
            "const:7",
        ],
        "",
    );
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let arms = p3o::bandit::TRAINED.len();
    assert_eq!(arms, 8);
    assert_eq!(lines.len(), arms * 2 * 3 + arms);
    let summaries: Vec<_> = lines.iter().filter(|l| l["summary"] == true).collect();
    let names: Vec<&str> = summaries
        .iter()
        .map(|s| s["arm"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "p3o-v1",
            "p3o-v2",
            "p3o-v2-g4",
            "ppo",
            "dpo",
            "rloo-g4",
            "grpo-g4",
            "p3o-trlx"
        ]
    );
    for s in summaries {
        let d = s["max_shift_difference"].as_f64().unwrap();
        if s["algorithm"] == "ppo" {
            assert!(d > 1e-3, "{s}")
        } else {
            assert!(d < 1e-9, "{s}")
        }
    }
}

/// In a build without feature `torch`, every command of the language-model
/// stack answers with one line that names the feature, and exit status 2.
// spec: C-ERRORS
#[cfg(not(feature = "torch"))]
#[test]
fn torch_commands_need_the_feature() {
    let commands: [&[&str]; 9] = [
        &["logprobs", "--model", "m"],
        &["generate", "--model", "m", "--max-new-tokens", "1"],
        &["reward", "--model", "m"],
        &["train", "--out", "o"],
        &["sft", "--out", "o"],
        &["reward-model", "train", "--out", "o"],
        &["eval", "--policy", "p", "--reference", "r", "--reward", "w"],
        &[
            "compare",
            "--policy",
            "p",
            "--reference",
            "r",
            "--reward",
            "w",
        ],
        &["demo", "--out", "o"],
    ];
    for args in commands {
        let out = p3o(args, "");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("built without the `torch` feature"),
            "{args:?}: {err}"
        );
    }
}
