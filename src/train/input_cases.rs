//! What the fuzz targets `train_config`, `data_readers` and `model_files`
//! check on any input, and what `tests/fuzz_regressions.rs` replays on their
//! seeds and crash files (feature `testing`): a config, data file or model
//! directory is either read or refused with one line that names it, never a
//! panic.

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

/// The files of a model directory, in the order [`check_model_files`]
/// splits its input into; `model.safetensors` takes the rest of the bytes.
pub const MODEL_FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "model.safetensors",
];

/// The input [`check_model_files`] reads as the model directory `dir`
/// (a seed of the fuzz target; scripts/fuzz.sh builds the same from the
/// fixtures with `cat`).
pub fn model_files_input(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for name in MODEL_FILES {
        if let Ok(bytes) = std::fs::read(dir.join(name)) {
            out.extend(bytes);
        }
        if name != "model.safetensors" {
            out.extend(b"\n--\n");
        }
    }
    out
}

/// Parameters above this are not allocated by the fuzz check (a config
/// alone can ask for gigabytes, which the loader rightly grants when the
/// machine has them); the config is still read and checked.
const FUZZ_MAX_PARAMETERS: u128 = 4_000_000;

/// `data` is a model directory: the texts of config.json, tokenizer.json,
/// tokenizer_config.json and generation_config.json, each ended by a line
/// `--` (an empty one is a file left out), then model.safetensors' bytes.
/// The model loads with an LM head and with a score head, or is refused in
/// one line naming a file of the directory (or the directory, for a
/// missing tensor); a model that loads runs a
/// forward pass, a reward and two cached greedy steps without error (a
/// shape the loader let through and the model code cannot take is a
/// loader bug); the tokenizer loads or is refused likewise, and one that
/// loads encodes, decodes and renders its chat template (or refuses in one
/// line). Returns whether the model loaded with either head.
pub fn check_model_files(data: &[u8]) -> bool {
    use crate::torch::chat::{ChatMessage, ChatTemplate, TemplateChoice};
    use crate::torch::config::ModelConfig;
    use crate::torch::generate::{GenerateOptions, generate};
    use crate::torch::model::positions_from_mask;
    use crate::torch::reward::rewards;
    use crate::torch::tokenizer::Tokenizer;
    use crate::torch::{Head, LanguageModel};
    use tch::{Device, Kind, Tensor};

    let dir = std::env::temp_dir().join(format!("p3o-input-case-{}-model", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the scratch directory is made");
    let mut rest = data;
    for name in MODEL_FILES {
        let (part, tail) = if name == "model.safetensors" {
            (rest, &[][..])
        } else {
            match rest.windows(4).position(|w| w == b"\n--\n") {
                Some(i) => (&rest[..i], &rest[i + 4..]),
                None => (rest, &[][..]),
            }
        };
        if !part.is_empty() {
            std::fs::write(dir.join(name), part).expect("the scratch file is written");
        }
        rest = tail;
    }
    // A message names a file, or the directory for a tensor that no file
    // of it holds.
    let names: Vec<String> = MODEL_FILES
        .iter()
        .map(|n| dir.join(n).display().to_string())
        .chain([dir.display().to_string()])
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let refused = |e: &dyn std::fmt::Display| assert_one_line(&e.to_string(), &names);

    let config = match ModelConfig::load(&dir) {
        Ok(c) => c,
        Err(e) => {
            refused(&e);
            let _ = std::fs::remove_dir_all(&dir);
            return false;
        }
    };
    let mut loaded = false;
    if config.parameter_count() <= FUZZ_MAX_PARAMETERS {
        for head in [Head::Lm, Head::Score] {
            let model = match LanguageModel::load(&dir, head, Device::Cpu, Kind::Float) {
                Ok(m) => m,
                Err(e) => {
                    refused(&e);
                    continue;
                }
            };
            loaded = true;
            let vocab = model.config.vocab_size();
            let t = model.config.max_positions().min(5);
            let row: Vec<i64> = (0..t).map(|i| (i * 7) % vocab).collect();
            let x = Tensor::from_slice(&row).unsqueeze(0);
            let mask = x.ones_like();
            let hidden = model
                .hidden(&x, &positions_from_mask(&mask), &mask, None)
                .unwrap_or_else(|e| panic!("a loaded model's forward pass fails: {e}"));
            match head {
                Head::Lm => {
                    let logits = model
                        .logits(&hidden)
                        .unwrap_or_else(|e| panic!("a loaded model's logits fail: {e}"));
                    assert_eq!(logits.size(), [1, t, vocab], "logits of a loaded model");
                    let steps = (model.config.max_positions() - t).min(2);
                    if steps > 0 {
                        let o = GenerateOptions {
                            max_new_tokens: steps,
                            temperature: 0.0,
                            top_k: None,
                            top_p: None,
                            seed: 0,
                            eos_token_ids: vec![],
                            pad_token_id: 0,
                            use_cache: true,
                            logprobs: true,
                        };
                        generate(&model, &[row.clone()], &o)
                            .unwrap_or_else(|e| panic!("a loaded model does not generate: {e}"));
                    }
                }
                Head::Score => {
                    let r = rewards(&model, &x, &mask)
                        .unwrap_or_else(|e| panic!("a loaded reward model fails: {e}"));
                    assert_eq!(r.size(), [1], "rewards of a loaded reward model");
                }
            }
        }
    }
    match Tokenizer::load(&dir, &config) {
        Ok(tok) => {
            if let Ok(ids) = tok.encode("the policy samples two responses") {
                let _ = tok.decode(&ids);
            }
            match ChatTemplate::choose(&TemplateChoice::Auto, &tok.tokenizer_config) {
                Ok(Some(chat)) => {
                    let m = [ChatMessage {
                        role: "user".into(),
                        content: "hi".into(),
                    }];
                    if let Err(e) = chat.render(&m, true) {
                        refused(&e);
                    }
                }
                Ok(None) => {}
                Err(e) => refused(&e),
            }
        }
        Err(e) => refused(&e),
    }
    let _ = std::fs::remove_dir_all(&dir);
    loaded
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
