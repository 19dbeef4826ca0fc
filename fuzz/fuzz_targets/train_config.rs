//! Any byte string as a `p3o train` TOML config (and `--set` overrides
//! after a line `--`) is read into a config that passes its checks and
//! survives its checkpoint round trip, or is refused with one line naming
//! the file or the key; it never panics (`p3o::train::input_cases`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    p3o::train::input_cases::check_train_config(data);
});
