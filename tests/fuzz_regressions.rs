//! Replays fuzz inputs through the case parser and evaluator: the committed
//! seeds, and every crash file kept in `fuzz/regressions/` (each named after
//! what it found). An input must give a finite result or a `CaseError`,
//! never a panic.

use std::fs;
use std::path::Path;

fn replay(dir: &str) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut count = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        // Other targets' crash files are in folders named after them.
        if path.is_dir() || path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let bytes = fs::read(&path).unwrap();
        if let Ok(line) = std::str::from_utf8(&bytes)
            && let Ok(result) = p3o::case::run_line(line)
        {
            assert!(result.loss.is_finite(), "{}", path.display());
            assert!(
                result.grad.iter().flatten().all(|v| v.is_finite()),
                "{}",
                path.display()
            );
        }
        count += 1;
    }
    count
}

// spec: C-ERRORS
#[test]
fn fuzz_seeds_evaluate() {
    assert!(replay("fuzz/seeds/reference_case") >= 4);
}

// spec: C-ERRORS
#[test]
fn fuzz_crash_files_do_not_panic() {
    replay("fuzz/regressions");
}
