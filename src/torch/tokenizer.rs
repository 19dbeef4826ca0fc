//! `tokenizer.json` through the `tokenizers` crate, with EOS and padding ids
//! from the model config.

use std::path::Path;

use super::config::ModelConfig;
use super::{Result, TorchError, file_error};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub eos_token_id: Option<i64>,
    /// The pad id: the config's, else EOS (the usual choice for GPT-style
    /// models without one).
    pub pad_token_id: Option<i64>,
}

impl Tokenizer {
    pub fn load(dir: &Path, config: &ModelConfig) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| file_error(&path, e))?;
        Tokenizer::checked(inner, config).map_err(|m| file_error(&path, m))
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
            pad_token_id: config.pad_token_id.or(config.eos_token_id),
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
