//! `tokenizer.json` through the `tokenizers` crate, with the special
//! tokens of `tokenizer_config.json` and the model config: BOS, the EOS
//! ids that end a response, and the pad id.

use std::path::Path;

use super::chat::TokenizerConfig;
use super::config::ModelConfig;
use super::{Result, TorchError, file_error};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The EOS a response ends with (SFT appends it): `tokenizer_config.json`'s
    /// `eos_token` (a chat model's end of turn), else the config's first.
    pub eos_token_id: Option<i64>,
    /// Every id that ends a response: the configs' EOS lists and
    /// `tokenizer_config.json`'s `eos_token`.
    pub eos_token_ids: Vec<i64>,
    /// `tokenizer_config.json`'s `bos_token` (the text a template writes),
    /// else the config's.
    pub bos_token_id: Option<i64>,
    /// The pad id: the config's, else `tokenizer_config.json`'s `pad_token`,
    /// else EOS (the usual choice for GPT-style models without one).
    pub pad_token_id: Option<i64>,
    /// Special-token texts and the chat template.
    pub tokenizer_config: TokenizerConfig,
    pad_from_config: Option<i64>,
}

/// `path` through the `tokenizers` crate, after two checks that keep its
/// deserializer from panicking: the text must be JSON (a syntax error inside
/// `decoder` reaches an `expect`), and no normalizer may be `Precompiled`
/// (its charsmap is indexed unchecked when text is normalized; none of the
/// families p3o loads uses one).
fn parse_tokenizer_json(path: &Path) -> Result<tokenizers::Tokenizer> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| file_error(path, e))?;
    if let Some(normalizer) = value.get("normalizer") {
        if has_type(normalizer, "Precompiled") {
            return Err(file_error(
                path,
                "normalizer type `Precompiled` (a SentencePiece charsmap) is not supported",
            ));
        }
    }
    text.parse::<tokenizers::Tokenizer>()
        .map_err(|e| file_error(path, e))
}

/// Whether `value` or anything nested in it is an object with `"type": name`.
fn has_type(value: &serde_json::Value, name: &str) -> bool {
    match value {
        serde_json::Value::Object(map) => {
            map.get("type").and_then(|t| t.as_str()) == Some(name)
                || map.values().any(|v| has_type(v, name))
        }
        serde_json::Value::Array(items) => items.iter().any(|v| has_type(v, name)),
        _ => false,
    }
}

impl Tokenizer {
    /// `dir/tokenizer.json`, with `dir/tokenizer_config.json` where it is.
    pub fn load(dir: &Path, config: &ModelConfig) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        let inner = parse_tokenizer_json(&path)?;
        let mut tok = Tokenizer::checked(inner, config).map_err(|m| file_error(&path, m))?;
        let tc = TokenizerConfig::load(dir)?;
        tok.take_special_tokens(tc)
            .map_err(|m| file_error(&dir.join("tokenizer_config.json"), m))?;
        Ok(tok)
    }

    /// Resolves `tc`'s special-token texts to ids; a token the vocabulary
    /// lacks is an error naming it.
    fn take_special_tokens(&mut self, tc: TokenizerConfig) -> std::result::Result<(), String> {
        let id = |field: &str, text: &Option<String>| -> std::result::Result<Option<i64>, String> {
            match text {
                None => Ok(None),
                Some(t) => self
                    .inner
                    .token_to_id(t)
                    .map(|i| Some(i64::from(i)))
                    .ok_or_else(|| {
                        format!("field `{field}`: `{t}` is not a token of tokenizer.json")
                    }),
            }
        };
        let eos = id("eos_token", &tc.special.eos)?;
        let bos = id("bos_token", &tc.special.bos)?;
        let pad = id("pad_token", &tc.special.pad)?;
        if let Some(e) = eos {
            self.eos_token_id = Some(e);
            if !self.eos_token_ids.contains(&e) {
                self.eos_token_ids.push(e);
            }
        }
        self.bos_token_id = bos.or(self.bos_token_id);
        if self.pad_from_config.is_none() {
            self.pad_token_id = pad.or(self.pad_token_id);
        }
        self.tokenizer_config = tc;
        Ok(())
    }

    /// Whether `id` ends a response.
    pub fn is_eos(&self, id: i64) -> bool {
        self.eos_token_ids.contains(&id)
    }

    /// The tokenizer, if every id it can give lies in the model's
    /// `0..vocab_size` (a model's vocabulary may be larger than its
    /// tokenizer's, padded for speed, but never smaller).
    fn checked(
        inner: tokenizers::Tokenizer,
        config: &ModelConfig,
    ) -> std::result::Result<Tokenizer, String> {
        let vocab = config.vocab_size();
        if let Some((token, id)) = inner
            .get_vocab(true)
            .into_iter()
            .max_by_key(|&(_, id)| id)
            .filter(|&(_, id)| i64::from(id) >= vocab)
        {
            return Err(format!(
                "token `{token}` has id {id}, outside the model's vocab_size {vocab} (config.json)"
            ));
        }
        Ok(Tokenizer {
            inner,
            eos_token_id: config.eos_token_id,
            eos_token_ids: config.eos_token_ids.clone(),
            bos_token_id: config.bos_token_id,
            pad_token_id: config.pad_token_id.or(config.eos_token_id),
            pad_from_config: config.pad_token_id,
            tokenizer_config: TokenizerConfig::default(),
        })
    }

    /// Whether `other` maps every token to the same id as this one: the
    /// same vocabulary, added tokens included.
    pub fn same_vocabulary(&self, other: &Tokenizer) -> bool {
        self.inner.get_vocab(true) == other.inner.get_vocab(true)
    }

    /// The number of tokens, added ones included.
    pub fn vocabulary_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// A tokenizer from the text of a `tokenizer.json`.
    pub fn from_json(text: &str, config: &ModelConfig) -> Result<Tokenizer> {
        let inner: tokenizers::Tokenizer = text
            .parse()
            .map_err(|e| TorchError::Input(format!("tokenizer.json: {e}")))?;
        Tokenizer::checked(inner, config)
            .map_err(|m| TorchError::Input(format!("tokenizer.json: {m}")))
    }

    /// Token ids of `text`, no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TorchError::Input(format!("cannot tokenize: {e}")))?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&i| {
                u32::try_from(i).map_err(|_| {
                    TorchError::Input(format!("token id {i} is negative or too large"))
                })
            })
            .collect::<Result<_>>()?;
        self.inner
            .decode(&ids, false)
            .map_err(|e| TorchError::Input(format!("cannot decode: {e}")))
    }
}
