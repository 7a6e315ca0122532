//! Chat templates: the model's Jinja template rendered with minijinja.
//!
//! - From HF `tokenizer_config.json` `chat_template` or GGUF `tokenizer.chat_template`, with the
//!   variables HF's `apply_chat_template` passes (`messages`, `add_generation_prompt`,
//!   `bos_token`, `eos_token`, `raise_exception`).

use crate::error::{Error, Result};
use serde::Serialize;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage {
            role: "user".into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage {
            role: "system".into(),
            content: content.into(),
        }
    }
}

/// Instructions a chat template may execute per rendering.
const TEMPLATE_FUEL: u64 = 5_000_000;

pub fn render(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<String> {
    let mut env = minijinja::Environment::new();
    // a template is code from the model's files: bounded, so one that loops without end (or
    // nests 10⁵ × 10⁵ loops) is an error, not a hang; real chat templates use a few thousand
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| Error::Template(format!("cannot parse: {e}")))?;
    let tpl = env
        .get_template("chat")
        .map_err(|e| Error::Template(e.to_string()))?;
    tpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token.unwrap_or(""),
        eos_token => eos_token.unwrap_or(""),
    })
    .map_err(|e| Error::Template(format!("cannot render: {e}")))
}
