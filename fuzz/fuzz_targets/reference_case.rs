//! Any byte string given to the `p3o reference` case parser and evaluator
//! either yields a finite result or a `CaseError`; it never panics
//! ([C-ERRORS]).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else { return };
    if let Ok(result) = p3o::case::run_line(line) {
        assert!(result.loss.is_finite());
        assert!(result.grad.iter().flatten().all(|v| v.is_finite()));
    }
});
