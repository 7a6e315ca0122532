//! Tokenizers: one `tokenizers::Tokenizer` path for HF and GGUF models, plus the chat template.
//!
//! - From `tokenizer.json`, or built from GGUF metadata: byte-level BPE gets the pre-tokenizer
//!   named by `tokenizer.ggml.pre` (llama.cpp's regexes), SentencePiece vocabularies become BPE
//!   with byte fallback (merges from the piece scores, as HF's `SentencePieceExtractor`).
//! - Kept as tokenizer.json text so `ferroq convert` can write it out.
//! - `render_prompt` and `encode_plain` (no BOS, for scoring) are the commands' shared rules.

pub mod chat;
mod gguf_vocab;
pub mod stream;

use crate::checkpoint::gguf::GgufFile;
use crate::error::{Error, Result};
use std::path::Path;
use std::str::FromStr;

pub use chat::ChatMessage;
pub use stream::TextStream;

/// A tokenizer with the metadata generation needs.
#[derive(Clone)]
pub struct TokenizerBundle {
    pub tokenizer: tokenizers::Tokenizer,
    /// tokenizer.json content that reproduces `tokenizer`.
    pub json: String,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Token ids that end generation.
    pub eos_ids: Vec<u32>,
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

thread_local! {
    /// Set while this thread is inside `guarded`: its panics become errors, so the panic
    /// hook's report would be noise on a clean error.
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Wrap the process's panic hook once so that panics `guarded` catches are not reported; every
/// other panic still reaches the hook that was there before.
fn quiet_guarded_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(|g| g.get()) {
                previous(info);
            }
        }));
    });
}

/// Call into the tokenizers crate with its panics turned into errors: some malformed
/// tokenizer.json files reach `unwrap`s inside it (a post-processor naming an undefined
/// special token), and a bad file must not take the process — or a server — down.
fn guarded<T>(
    what: &str,
    f: impl FnOnce() -> std::result::Result<T, tokenizers::Error>,
) -> Result<T> {
    quiet_guarded_panics();
    let outer = GUARDED.with(|g| g.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    match r {
        Ok(r) => r.map_err(tok_err),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            Err(Error::Tokenizer(format!(
                "the tokenizer failed while {what} ({msg}); its tokenizer.json is malformed"
            )))
        }
    }
}

impl TokenizerBundle {
    /// A tokenizer from tokenizer.json text. Padding and truncation are switched off: ferroq
    /// encodes one text at a time and must see all of it (a `Fixed(10⁸)` padding would also
    /// allocate gigabytes per call).
    pub fn from_json(json: String) -> Result<tokenizers::Tokenizer> {
        let mut t = guarded("loading", || tokenizers::Tokenizer::from_str(&json))?;
        t.with_padding(None);
        guarded("loading", || t.with_truncation(None).map(|_| ()))?;
        Ok(t)
    }

    /// Build from GGUF metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let v = gguf_vocab::build(g)?;
        let tokenizer = Self::from_json(v.json.clone())?;
        let mut eos_ids: Vec<u32> = v.eos_id.into_iter().collect();
        // ChatML models end a turn with <|im_end|> even when the file's eos is <|endoftext|>.
        for extra in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>"] {
            if let Some(id) = tokenizer.token_to_id(extra) {
                if !eos_ids.contains(&id)
                    && v.chat_template
                        .as_deref()
                        .is_some_and(|t| t.contains(extra))
                {
                    eos_ids.push(id);
                }
            }
        }
        Ok(TokenizerBundle {
            tokenizer,
            json: v.json,
            chat_template: v.chat_template,
            bos_token: v.bos_token,
            eos_token: v.eos_token,
            eos_ids,
        })
    }

    /// Read `tokenizer.json` and `tokenizer_config.json` from an HF model directory.
    /// `config_eos` are the eos ids from config.json / generation_config.json.
    pub fn from_hf_dir(dir: &Path, config_eos: &[u32]) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        let json =
            crate::checkpoint::read_text(&tj, crate::checkpoint::MAX_TOKENIZER_BYTES, "tokenizer")?;
        let tokenizer = Self::from_json(json.clone())?;
        let tc = dir.join("tokenizer_config.json");
        // absent: no chat template or special-token names; present: read in full or refused
        let cfg: serde_json::Value = if tc.exists() {
            let text = crate::checkpoint::read_text(
                &tc,
                crate::checkpoint::MAX_TOKENIZER_BYTES,
                "tokenizer config",
            )?;
            serde_json::from_str(&text)
                .map_err(|e| Error::Tokenizer(format!("{}: {e}", tc.display())))?
        } else {
            serde_json::Value::Null
        };
        let token_str = |key: &str| -> Option<String> {
            match cfg.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        let chat_template = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => None,
        };
        let bos_token = token_str("bos_token");
        let eos_token = token_str("eos_token");
        let mut eos_ids = config_eos.to_vec();
        if let Some(id) = eos_token.as_deref().and_then(|t| tokenizer.token_to_id(t)) {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        Ok(TokenizerBundle {
            tokenizer,
            json,
            chat_template,
            bos_token,
            eos_token,
            eos_ids,
        })
    }

    /// Encode text, adding the special tokens the tokenizer's post-processor asks for (BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(guarded("encoding", || self.tokenizer.encode(text, true))?
            .get_ids()
            .to_vec())
    }

    /// Encode text without special tokens: llama-perplexity's convention for scoring a text
    /// (no BOS, the whole text at once), used by `eval` and `analyze`.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        Ok(guarded("encoding", || self.tokenizer.encode(text, false))?
            .get_ids()
            .to_vec())
    }

    /// The text a prompt becomes: as given, or (`chat`) the user turn of the model's chat
    /// template after an optional system turn.
    pub fn render_prompt(&self, prompt: &str, chat: bool, system: Option<&str>) -> Result<String> {
        if !chat {
            return Ok(prompt.to_string());
        }
        let mut msgs = Vec::new();
        if let Some(s) = system {
            msgs.push(ChatMessage::system(s));
        }
        msgs.push(ChatMessage::user(prompt));
        self.apply_chat_template(&msgs)
    }

    /// Decode ids; special tokens are kept when `keep_special`.
    pub fn decode(&self, ids: &[u32], keep_special: bool) -> Result<String> {
        guarded("decoding", || self.tokenizer.decode(ids, !keep_special))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Render the chat template for `messages`, ending with the assistant prompt.
    pub fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String> {
        let tpl = self
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::Template("the model has no chat template".into()))?;
        chat::render(
            tpl,
            messages,
            true,
            self.bos_token.as_deref(),
            self.eos_token.as_deref(),
        )
    }

    /// The tokenizer_config.json to write beside tokenizer.json.
    pub fn tokenizer_config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "chat_template": self.chat_template,
            "clean_up_tokenization_spaces": false,
            "model_max_length": 1_000_000_000,
        })
    }
}
