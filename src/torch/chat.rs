//! `tokenizer_config.json` (special tokens, chat template) and chat
//! templates rendered as transformers' `apply_chat_template` renders them:
//! Jinja through the `minijinja` crate with HF's settings (blocks trimmed
//! and left-stripped, `raise_exception`, Python string methods, `tojson`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Result, TorchError, file_error};

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// The texts of the special tokens `tokenizer_config.json` names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
    pub unk: Option<String>,
}

/// What p3o reads of a `tokenizer_config.json` (and of the
/// `chat_template.jinja` transformers 5 may write beside it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenizerConfig {
    pub special: SpecialTokens,
    /// The default chat template's source, where there is one.
    pub chat_template: Option<String>,
    /// Where the template came from, for messages.
    pub template_origin: String,
}

impl TokenizerConfig {
    /// Reads `dir/tokenizer_config.json` and `dir/chat_template.jinja`;
    /// either may be absent (no special tokens, no template).
    pub fn load(dir: &Path) -> Result<TokenizerConfig> {
        let path = dir.join("tokenizer_config.json");
        let mut out = TokenizerConfig::default();
        if let Ok(text) = std::fs::read_to_string(&path) {
            out = TokenizerConfig::from_json(&text).map_err(|m| file_error(&path, m))?;
            out.template_origin = path.display().to_string();
        } else if path.exists() {
            return Err(file_error(&path, "cannot be read as UTF-8 text"));
        }
        let jinja = dir.join("chat_template.jinja");
        if out.chat_template.is_none() && jinja.is_file() {
            out.chat_template =
                Some(std::fs::read_to_string(&jinja).map_err(|e| file_error(&jinja, e))?);
            out.template_origin = jinja.display().to_string();
        }
        Ok(out)
    }

    /// The fields of a `tokenizer_config.json`'s text; an error names the
    /// field.
    pub fn from_json(text: &str) -> std::result::Result<TokenizerConfig, String> {
        let v: serde_json::Value =
            crate::json::from_str_strict(text).map_err(|e| format!("malformed JSON: {e}"))?;
        let token = |field: &str| -> std::result::Result<Option<String>, String> {
            match v.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                // An AddedToken written out: {"content": "<s>", ...}.
                Some(serde_json::Value::Object(o)) => match o.get("content") {
                    Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                    _ => Err(format!("field `{field}.content`: expected a string")),
                },
                Some(other) => Err(format!(
                    "field `{field}`: expected a token string, got {other}"
                )),
            }
        };
        let chat_template = match v.get("chat_template") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // Named templates: [{"name": "default", "template": "..."}, ...].
            Some(serde_json::Value::Array(list)) => {
                let default = list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"));
                match default.and_then(|t| t.get("template")) {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    _ => {
                        return Err(
                            "field `chat_template`: a list of named templates without a `default` one"
                                .into(),
                        );
                    }
                }
            }
            Some(other) => {
                return Err(format!(
                    "field `chat_template`: expected a string, got {other}"
                ));
            }
        };
        Ok(TokenizerConfig {
            special: SpecialTokens {
                bos: token("bos_token")?,
                eos: token("eos_token")?,
                pad: token("pad_token")?,
                unk: token("unk_token")?,
            },
            chat_template,
            template_origin: String::new(),
        })
    }
}

/// Which chat template renders `messages` prompts (config key
/// `chat_template`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateChoice {
    /// The policy tokenizer's own (`tokenizer_config.json`), if it has one.
    Auto,
    /// None: `messages` prompts are refused.
    None,
    /// A Jinja file.
    File(PathBuf),
}

impl TemplateChoice {
    /// `auto`, `none`, or a path.
    pub fn parse(s: &str) -> TemplateChoice {
        match s {
            "auto" => TemplateChoice::Auto,
            "none" => TemplateChoice::None,
            path => TemplateChoice::File(PathBuf::from(path)),
        }
    }
}

/// A compiled chat template with the special tokens it may name.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    special: SpecialTokens,
    origin: String,
}

const NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source`; a syntax error names `origin`.
    pub fn new(source: String, special: SpecialTokens, origin: String) -> Result<ChatTemplate> {
        let mut env = minijinja::Environment::new();
        // transformers renders with jinja2's trim_blocks and lstrip_blocks.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TorchError::Input(format!("{origin}: {e}")))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        env.add_template_owned(NAME, source).map_err(|e| {
            TorchError::Input(format!("{origin}: chat template does not compile: {e}"))
        })?;
        Ok(ChatTemplate {
            env,
            special,
            origin,
        })
    }

    /// The template `choice` names for a tokenizer whose config is
    /// `tokenizer`: `Auto` is the tokenizer's own (none if it has none).
    pub fn choose(
        choice: &TemplateChoice,
        tokenizer: &TokenizerConfig,
    ) -> Result<Option<ChatTemplate>> {
        match choice {
            TemplateChoice::None => Ok(None),
            TemplateChoice::Auto => tokenizer
                .chat_template
                .clone()
                .map(|t| {
                    ChatTemplate::new(
                        t,
                        tokenizer.special.clone(),
                        tokenizer.template_origin.clone(),
                    )
                })
                .transpose(),
            TemplateChoice::File(path) => {
                let source = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
                ChatTemplate::new(
                    source,
                    tokenizer.special.clone(),
                    path.display().to_string(),
                )
                .map(Some)
            }
        }
    }

    /// The conversation as the model's prompt text; with
    /// `add_generation_prompt`, followed by the opening of an assistant turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| TorchError::Input(format!("{}: {e}", self.origin)))?;
        let s = &self.special;
        template
            .render(minijinja::context! {
                messages => minijinja::value::Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => add_generation_prompt,
                bos_token => s.bos.clone().unwrap_or_default(),
                eos_token => s.eos.clone().unwrap_or_default(),
                pad_token => s.pad.clone().unwrap_or_default(),
                unk_token => s.unk.clone().unwrap_or_default(),
            })
            .map_err(|e| {
                let mut message = e.to_string();
                if let Some(detail) = e.detail() {
                    message = format!("{message} ({detail})");
                }
                TorchError::Input(format!("{}: chat template: {message}", self.origin))
            })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }
}
