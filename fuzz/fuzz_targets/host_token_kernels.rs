//! Differential target: on any case decoded from the bytes
//! (`p3o::cuda::token_case`), the host execution of the token kernels and
//! the float64 reference agree on every row ([C-TOKEN-LOGPROB]).
#![no_main]

use libfuzzer_sys::fuzz_target;
use p3o::cuda::token_case::TokenCase;

fuzz_target!(|data: &[u8]| {
    let Ok(case) = TokenCase::from_bytes(data) else {
        return;
    };
    if let Err(e) = case.check_host() {
        let dtype = if case.bf16 { "bf16" } else { "f32" };
        let (v, t, g) = (case.v, &case.targets, &case.g);
        panic!("{e}\n{dtype} V={v} targets {t:?} g {g:?}");
    }
});
