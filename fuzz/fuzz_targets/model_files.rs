//! Any byte string as a model directory (config.json, tokenizer.json,
//! tokenizer_config.json, generation_config.json, each ended by a line
//! `--`, then model.safetensors): the loader answers, and what it loads
//! runs, or it refuses in one line naming a file; it never panics
//! (`p3o::train::input_cases::check_model_files`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    p3o::train::input_cases::check_model_files(data);
});
