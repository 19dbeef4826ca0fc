//! Input lines of `p3o logprobs`, `generate` and `reward`: either token ids
//! (`prompt_ids`, `response_ids`) or text (`prompt`, `response`).

use serde_json::Value;

use super::tokenizer::Tokenizer;

/// One parsed input line.
#[derive(Clone, Debug, PartialEq)]
pub struct LmInput {
    pub prompt: Vec<i64>,
    pub response: Vec<i64>,
}

/// Parses one line; `response` is required when `need_response`. Token ids
/// are checked against `vocab`. Errors name the field.
pub fn parse_line(
    line: &str,
    tokenizer: Option<&Tokenizer>,
    vocab: i64,
    need_response: bool,
) -> Result<LmInput, String> {
    let v: Value = crate::json::from_str_strict(line).map_err(|e| {
        let (message, column) = crate::json::message_and_column(&e);
        format!("malformed JSON at column {column}: {message}")
    })?;
    let obj = v.as_object().ok_or("expected a JSON object")?;
    let known = ["prompt", "response", "prompt_ids", "response_ids"];
    if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!(
            "field `{k}`: unknown field (known: {})",
            known.join(", ")
        ));
    }
    let part = |text: &str, ids: &str, required: bool| -> Result<Vec<i64>, String> {
        match (obj.get(text), obj.get(ids)) {
            (Some(_), Some(_)) => Err(format!("give `{text}` or `{ids}`, not both")),
            (None, Some(v)) => {
                let items = v
                    .as_array()
                    .ok_or(format!("field `{ids}`: expected an array of token ids"))?;
                items
                    .iter()
                    .enumerate()
                    .map(|(i, t)| match t.as_i64() {
                        Some(id) if (0..vocab).contains(&id) => Ok(id),
                        _ => Err(format!(
                            "field `{ids}[{i}]`: {t} is not a token id in 0..{vocab}"
                        )),
                    })
                    .collect()
            }
            (Some(v), None) => {
                let s = v
                    .as_str()
                    .ok_or(format!("field `{text}`: expected a string"))?;
                let tok = tokenizer.ok_or(format!(
                    "field `{text}`: the model directory has no tokenizer.json; give `{ids}`"
                ))?;
                tok.encode(s).map_err(|e| format!("field `{text}`: {e}"))
            }
            (None, None) if required => Err(format!("field `{text}` or `{ids}` is required")),
            (None, None) => Ok(vec![]),
        }
    };
    let prompt = part("prompt", "prompt_ids", true)?;
    if prompt.is_empty() {
        return Err("the prompt is empty".into());
    }
    let response = part("response", "response_ids", need_response)?;
    Ok(LmInput { prompt, response })
}
