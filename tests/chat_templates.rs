//! Chat templates rendered by p3o against transformers' `apply_chat_template`
//! on the committed templates of tests/fixtures/chat/ (a ChatML-style one
//! that leans on trim_blocks/lstrip_blocks, a Llama-3-style one with `{%-`
//! whitespace control, `|trim`, a string method and `raise_exception`):
//! the same text, the same ids, the same refusals; and a `{"messages"}`
//! prompt line rendered as the trainer renders it.
#![cfg(feature = "torch")]

use std::path::{Path, PathBuf};

use p3o::torch::chat::{ChatMessage, ChatTemplate, TemplateChoice, TokenizerConfig};
use p3o::torch::config::ModelConfig;
use p3o::torch::tokenizer::Tokenizer;
use p3o::train::data::prompt_of;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    text: String,
    ids: Vec<i64>,
}

#[derive(Deserialize)]
struct ErrorCase {
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    error: String,
}

#[derive(Deserialize)]
struct Expected {
    cases: Vec<Case>,
    error_cases: Vec<ErrorCase>,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/chat")
        .join(name)
}

fn expected(name: &str) -> Expected {
    let text = std::fs::read_to_string(fixture(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A model config whose vocabulary holds the fixture tokenizer's added
/// tokens (the tokenizer-only fixtures have no model).
fn config() -> ModelConfig {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama/config.json");
    let mut raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    raw["vocab_size"] = 384.into();
    ModelConfig::from_json(raw).unwrap()
}

fn template(name: &str) -> ChatTemplate {
    let tc = TokenizerConfig::load(&fixture(name)).unwrap();
    ChatTemplate::choose(&TemplateChoice::Auto, &tc)
        .unwrap()
        .expect("the fixture's tokenizer_config.json has a chat_template")
}

fn renders_as_transformers(name: &str) {
    let template = template(name);
    let tokenizer = Tokenizer::load(&fixture(name), &config()).unwrap();
    let want = expected(name);
    assert!(
        want.cases.len() >= 10,
        "{name}: too few cases in expected.json"
    );
    for (i, case) in want.cases.iter().enumerate() {
        let text = template
            .render(&case.messages, case.add_generation_prompt)
            .unwrap_or_else(|e| panic!("{name} case {i}: {e}"));
        assert_eq!(text, case.text, "{name} case {i}: rendered text");
        let ids = tokenizer.encode(&text).unwrap();
        assert_eq!(ids, case.ids, "{name} case {i}: ids of {text:?}");
    }
    for (i, case) in want.error_cases.iter().enumerate() {
        let err = template
            .render(&case.messages, case.add_generation_prompt)
            .expect_err("transformers refused this conversation")
            .to_string();
        assert!(
            err.contains(&case.error),
            "{name} error case {i}: {err:?} lacks transformers' message {:?}",
            case.error
        );
        assert_eq!(
            err.lines().count(),
            1,
            "{name} error case {i}: one line, got {err:?}"
        );
    }
}

#[test]
fn chatml_template_renders_as_transformers() {
    renders_as_transformers("chatml");
}

#[test]
fn llama3_template_renders_as_transformers() {
    let want = expected("llama3");
    assert!(
        !want.error_cases.is_empty(),
        "the llama3 fixture has a raise_exception case"
    );
    renders_as_transformers("llama3");
}

/// The BOS comes from the template, not from the tokenizer's
/// post-processor: p3o encodes the rendered text without special tokens,
/// as `apply_chat_template` does, so the llama3 ids hold one BOS.
#[test]
fn rendered_prompts_hold_one_bos() {
    let tokenizer = Tokenizer::load(&fixture("llama3"), &config()).unwrap();
    let bos = tokenizer
        .bos_token_id
        .expect("the llama3 fixture names a BOS");
    for case in expected("llama3").cases {
        assert_eq!(case.ids.iter().filter(|&&i| i == bos).count(), 1);
        assert_eq!(case.ids[0], bos);
    }
}

/// A `{"messages"}` prompt line is the conversation rendered with the
/// opening of the assistant's turn, from the tokenizer's own template
/// (`auto`) or from a file naming the same template.
#[test]
fn messages_prompt_lines_render_with_the_generation_prompt() {
    for name in ["chatml", "llama3"] {
        let tc = TokenizerConfig::load(&fixture(name)).unwrap();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("chat-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("template.jinja");
        std::fs::write(&file, tc.chat_template.clone().unwrap()).unwrap();
        let from_file = ChatTemplate::choose(&TemplateChoice::File(file), &tc)
            .unwrap()
            .unwrap();
        let auto = template(name);
        let mut seen = 0;
        for case in expected(name)
            .cases
            .iter()
            .filter(|c| c.add_generation_prompt)
        {
            let line = serde_json::json!({ "messages": case.messages });
            assert_eq!(prompt_of(&line, Some(&auto)).unwrap(), case.text, "{name}");
            assert_eq!(
                prompt_of(&line, Some(&from_file)).unwrap(),
                case.text,
                "{name}"
            );
            seen += 1;
        }
        assert!(seen >= 5, "{name}: {seen} generation-prompt cases");
        // Without a template the line is refused, naming the config key.
        let line = serde_json::json!({ "messages": expected(name).cases[0].messages });
        let err = prompt_of(&line, None).unwrap_err();
        assert!(err.contains("chat_template"), "{err}");
    }
}

/// `chat_template = "none"` takes no template even where the tokenizer has
/// one; a template that does not compile is one line naming its file.
#[test]
fn template_choices_and_broken_templates() {
    let tc = TokenizerConfig::load(&fixture("chatml")).unwrap();
    assert!(
        ChatTemplate::choose(&TemplateChoice::None, &tc)
            .unwrap()
            .is_none()
    );
    assert_eq!(TemplateChoice::parse("auto"), TemplateChoice::Auto);
    assert_eq!(TemplateChoice::parse("none"), TemplateChoice::None);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("chat-broken");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broken.jinja");
    std::fs::write(&file, "{% for m in messages %}{{ m.content }}").unwrap();
    let err = ChatTemplate::choose(&TemplateChoice::File(file.clone()), &tc)
        .err()
        .expect("an unclosed for block does not compile")
        .to_string();
    assert!(
        err.contains("broken.jinja") && err.contains("does not compile"),
        "{err}"
    );
    let missing = dir.join("absent.jinja");
    let err = ChatTemplate::choose(&TemplateChoice::File(missing), &tc)
        .err()
        .expect("a missing file is refused")
        .to_string();
    assert!(err.contains("absent.jinja"), "{err}");
}
