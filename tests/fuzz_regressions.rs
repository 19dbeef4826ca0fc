//! Replays the inputs of fuzz target `reference_case` through the case
//! parser and evaluator: the committed seeds, each of which must still
//! evaluate to a finite result, and the crash files kept in
//! `fuzz/regressions/reference_case/` (each named after what it found),
//! which must give a finite result or a `CaseError`, never a panic. The
//! kernel targets' inputs are replayed by `tests/cuda_kernels.rs`; a crash
//! file anywhere else under `fuzz/regressions/` would be replayed by no
//! test, and fails here. With feature `torch`, the training inputs'
//! targets (`train_config`, `data_readers`) and the model loader's
//! (`model_files`, whose seeds include every model fixture) replay theirs
//! here too.

use std::fs;
use std::path::{Path, PathBuf};

/// The committed seeds of `reference_case`.
const REFERENCE_SEEDS: usize = 4;

/// The fuzz targets, each with the folder of its crash files.
const TARGETS: [&str; 6] = [
    "reference_case",
    "host_token_kernels",
    "host_sequence_kernels",
    "train_config",
    "data_readers",
    "model_files",
];

/// The files of `dir` under the crate, README.md files aside, sorted; none
/// when the folder does not exist.
fn inputs(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    files.sort();
    files
}

/// `line`'s result, when it is a case that evaluates, checked finite.
fn evaluate(path: &Path) -> Result<(), String> {
    let bytes = fs::read(path).unwrap();
    let line = std::str::from_utf8(&bytes).map_err(|e| e.to_string())?;
    let result = p3o::case::run_line(line).map_err(|e| e.to_string())?;
    assert!(result.loss.is_finite(), "{}", path.display());
    assert!(
        result.grad.iter().flatten().all(|v| v.is_finite()),
        "{}",
        path.display()
    );
    Ok(())
}

// spec: C-ERRORS C-CLI-REFERENCE
#[test]
fn fuzz_seeds_evaluate() {
    let seeds = inputs("fuzz/seeds/reference_case");
    assert!(
        seeds.len() >= REFERENCE_SEEDS,
        "{} seeds, {REFERENCE_SEEDS} committed",
        seeds.len()
    );
    for path in &seeds {
        if let Err(e) = evaluate(path) {
            panic!("seed {} no longer evaluates: {e}", path.display());
        }
    }
}

/// The seeds and crash files of the training inputs' targets (feature
/// `torch`) go through the targets' own checks: read, or refused in one
/// line naming the file or key; the seeds cover both answers.
// spec: C-ERRORS
#[cfg(feature = "torch")]
#[test]
fn training_input_seeds_and_crash_files() {
    use p3o::train::input_cases::{check_data_readers, check_train_config};
    for (target, check, seeds) in [
        ("train_config", check_train_config as fn(&[u8]) -> bool, 4),
        ("data_readers", check_data_readers, 4),
    ] {
        let files = inputs(&format!("fuzz/seeds/{target}"));
        assert!(
            files.len() >= seeds,
            "{target}: {} seeds, {seeds} committed",
            files.len()
        );
        let crashes = inputs(&format!("fuzz/regressions/{target}"));
        let outcomes: Vec<bool> = files
            .iter()
            .chain(&crashes)
            .map(|path| check(&fs::read(path).unwrap()))
            .collect();
        assert!(
            outcomes.contains(&true) && outcomes.contains(&false),
            "{target}: the seeds are all read or all refused"
        );
    }
}

/// Target `model_files`: every model fixture, as the target reads a model
/// directory, loads and runs; the committed seeds (configs and tensors
/// that disagree, truncated files, unsupported models) are refused in one
/// line; its crash files are answered without a panic.
// spec: C-ERRORS
#[cfg(feature = "torch")]
#[test]
fn model_files_seeds_fixtures_and_crash_files() {
    use p3o::train::input_cases::{check_model_files, model_files_input};
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("model.safetensors").is_file())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 15,
        "{} single-file model fixtures",
        dirs.len()
    );
    for dir in &dirs {
        assert!(
            check_model_files(&model_files_input(dir)),
            "{}: the fixture does not load as a fuzz input",
            dir.display()
        );
    }
    let seeds = inputs("fuzz/seeds/model_files");
    assert!(seeds.len() >= 6, "{} seeds, 6 committed", seeds.len());
    for path in &seeds {
        assert!(
            !check_model_files(&fs::read(path).unwrap()),
            "{}: the seed of a broken model loads",
            path.display()
        );
    }
    for path in inputs("fuzz/regressions/model_files") {
        let _ = check_model_files(&fs::read(path).unwrap());
    }
}

// spec: C-ERRORS
#[test]
fn fuzz_crash_files_do_not_panic() {
    for path in inputs("fuzz/regressions/reference_case") {
        // A refusal is an answer; only a panic or a non-finite result fails.
        let _ = evaluate(&path);
    }
    // Every crash file sits in its target's folder, where a test replays it.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    for entry in fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            assert!(
                TARGETS.contains(&name.as_str()),
                "{}: not the folder of a fuzz target ({TARGETS:?})",
                path.display()
            );
        } else {
            assert_eq!(
                name,
                "README.md",
                "{}: a crash file outside its target's folder is replayed by no test",
                path.display()
            );
        }
    }
}
