//! What the fuzz targets `train_config` and `data_readers` check on any
//! input, and what `tests/fuzz_regressions.rs` replays on their seeds and
//! crash files (feature `testing`): a config or data file is either read or
//! refused with one line that names it, never a panic.

use std::path::{Path, PathBuf};

use super::config::TrainConfig;
use super::data::load_prompts;
use super::reward_model::load_preferences;
use super::sft::load_pairs;

/// A scratch file of this process for `name`, written with `bytes`.
fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("p3o-input-case-{}-{name}", std::process::id()));
    std::fs::write(&path, bytes).expect("the scratch file is written");
    path
}

/// `data` is a TOML config file, then (after a line `--`) one `--set`
/// override per line. A config that loads passes its own checks and
/// survives the round trip through a checkpoint's `state.json`; one that
/// does not is refused with one line naming the file or a config key.
/// Returns whether it loaded.
pub fn check_train_config(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let (file, sets) = text.split_once("\n--\n").unwrap_or((&text, ""));
    let path = scratch("config.toml", file.as_bytes());
    let sets: Vec<String> = sets.lines().map(str::to_string).collect();
    let loaded = match TrainConfig::load(Some(&path), &sets) {
        Ok(cfg) => {
            cfg.check().expect("a loaded config passes its checks");
            let json = serde_json::to_string(&cfg).expect("a config serialises");
            let back: TrainConfig = serde_json::from_str(&json).expect("and reads back");
            assert_eq!(back, cfg, "the state.json round trip");
            true
        }
        Err(e) => {
            assert_one_line(
                &e.to_string(),
                &[&path.display().to_string(), "config", "--set"],
            );
            false
        }
    };
    let _ = std::fs::remove_file(&path);
    loaded
}

/// `data` as a JSON Lines file of prompts, of SFT pairs and of preference
/// pairs: each reader gives a non-empty list or one line naming the file
/// (and, for a bad line, its number). Returns whether any reader read it.
/// The template [`check_data_readers`] renders conversations with.
const FUZZ_CHAT_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

pub fn check_data_readers(data: &[u8]) -> bool {
    let path = scratch("data.jsonl", data);
    let name = path.display().to_string();
    let mut read = false;
    // Conversations through a ChatML-style template.
    let chat = crate::torch::chat::ChatTemplate::new(
        FUZZ_CHAT_TEMPLATE.to_string(),
        Default::default(),
        "the fuzz chat template".into(),
    )
    .expect("the fuzz template compiles");
    match load_prompts(&path, Some(&chat)) {
        Ok(p) => read |= !p.is_empty(),
        Err(e) => assert_one_line(&e, &[&name]),
    }
    match load_pairs(&name, 0, 0) {
        Ok(p) => read |= !p.is_empty(),
        Err(e) => assert_one_line(&e.to_string(), &[&name]),
    }
    match load_preferences(Path::new(&name)) {
        Ok(p) => read |= !p.is_empty(),
        Err(e) => assert_one_line(&e.to_string(), &[&name]),
    }
    let _ = std::fs::remove_file(&path);
    read
}

/// A refusal is one line that names at least one of `names`.
fn assert_one_line(message: &str, names: &[&str]) {
    assert!(
        !message.contains('\n'),
        "a message of several lines: {message:?}"
    );
    assert!(
        names.iter().any(|n| message.contains(n)),
        "the message names none of {names:?}: {message}"
    );
}
