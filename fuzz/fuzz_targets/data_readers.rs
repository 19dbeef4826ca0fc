//! Any byte string as a JSON Lines file of prompts, SFT pairs or preference
//! pairs is read or refused with one line naming the file (and the line);
//! it never panics (`p3o::train::input_cases`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    p3o::train::input_cases::check_data_readers(data);
});
