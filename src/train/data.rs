//! Prompt datasets: JSON Lines of plain prompts (`{"prompt"}`, also the
//! TL;DR format with its `label`), or Anthropic HH pairs
//! (`{"chosen", "rejected"}`, the prompt being the dialogue up to the last
//! "Assistant:" turn), or conversations (`{"messages"}`) rendered with a
//! chat template.

use std::path::Path;

use crate::torch::chat::{ChatMessage, ChatTemplate};

/// The JSON objects of a JSON Lines file with their line numbers (blank
/// lines skipped); malformed JSON is an error naming the line, and so is a
/// line that `parse` rejects.
pub fn read_jsonl<T>(
    path: &Path,
    parse: impl Fn(&serde_json::Value) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let mut out = Vec::new();
    for (number, line) in crate::json::read_lines(path)? {
        let at = |m: String| format!("{} line {number}: {m}", path.display());
        let v: serde_json::Value = crate::json::from_str_strict(&line).map_err(|e| {
            let (message, column) = crate::json::message_and_column(&e);
            at(format!("malformed JSON at column {column}: {message}"))
        })?;
        out.push(parse(&v).map_err(at)?);
    }
    if out.is_empty() {
        return Err(format!("{}: no lines", path.display()));
    }
    Ok(out)
}

/// Where item `index` (0-based, in file order) of the JSON Lines file or
/// built-in set `source` comes from, for a message: `FILE line N`.
pub fn item_place(source: &str, index: usize) -> String {
    if source.starts_with("builtin:") {
        return format!("{source} example {}", index + 1);
    }
    let path = Path::new(source);
    match crate::json::read_lines(path)
        .ok()
        .and_then(|l| l.get(index).map(|(n, _)| *n))
    {
        Some(line) => format!("{} line {line}", path.display()),
        None => format!("{} item {}", path.display(), index + 1),
    }
}

/// Shuffles `items` with a ChaCha8 stream seeded with `seed` and splits off
/// a held-out share (rounded, leaving at least one item to train on):
/// returns (train, held out).
pub fn split_heldout<T>(mut items: Vec<T>, fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    items.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let held =
        ((items.len() as f64 * fraction).round() as usize).min(items.len().saturating_sub(1));
    let heldout = items.split_off(items.len() - held);
    (items, heldout)
}

/// A string field of a JSON Lines object.
pub fn string_field(v: &serde_json::Value, key: &str) -> Result<String, String> {
    v.get(key)
        .and_then(|s| s.as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("field `{key}`: expected a string"))
}

/// One prompt per line of `path`; a malformed line is an error naming it.
/// `chat` renders the lines that hold a conversation.
pub fn load_prompts(path: &Path, chat: Option<&ChatTemplate>) -> Result<Vec<String>, String> {
    read_jsonl(path, |v| prompt_of(v, chat))
}

/// The prompt text of one line: `{"prompt"}`, a conversation
/// `{"messages": [{"role", "content"}, ...]}` rendered by `chat` with the
/// opening of the assistant's turn, or the Anthropic HH `{"chosen"}` up to
/// its last assistant turn.
pub fn prompt_of(v: &serde_json::Value, chat: Option<&ChatTemplate>) -> Result<String, String> {
    if let Some(m) = v.get("messages") {
        let messages: Vec<ChatMessage> = serde_json::from_value(m.clone()).map_err(|e| {
            format!("field `messages`: expected a list of {{\"role\", \"content\"}} strings ({e})")
        })?;
        if messages.is_empty() {
            return Err("field `messages`: the conversation is empty".into());
        }
        let template = chat.ok_or(
            "field `messages`: a conversation needs a chat template, and there is none (config key `chat_template`: `auto` takes the policy's tokenizer_config.json, or name a Jinja file)",
        )?;
        return template
            .render(&messages, true)
            .map_err(|e| format!("field `messages`: {e}"));
    }
    if let Some(p) = v.get("prompt") {
        return p
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| "field `prompt`: expected a string".into());
    }
    if let Some(c) = v.get("chosen") {
        let c = c.as_str().ok_or("field `chosen`: expected a string")?;
        let marker = "\n\nAssistant:";
        let end = c
            .rfind(marker)
            .ok_or("field `chosen`: no \"\\n\\nAssistant:\" turn (Anthropic HH format)")?;
        return Ok(c[..end + marker.len()].to_string());
    }
    Err(
        "expected a `prompt` field (plain or TL;DR format) or `chosen` (Anthropic HH format)"
            .into(),
    )
}
