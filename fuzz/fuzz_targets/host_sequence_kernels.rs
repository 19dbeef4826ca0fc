//! Differential target: on any case decoded from the bytes
//! (`p3o::cuda::sequence_case`), the host execution of the pair,
//! sequence-sum and GAE kernels and the float64 reference agree to
//! [C-F64-KERNELS].
#![no_main]

use libfuzzer_sys::fuzz_target;
use p3o::cuda::sequence_case::SequenceCase;

fuzz_target!(|data: &[u8]| {
    let Ok(case) = SequenceCase::from_bytes(data) else {
        return;
    };
    if let Err(e) = case.check_host() {
        panic!("{e}\n{case:?}");
    }
});
