//! Incremental detokenization for streaming generated text.
//!
//! - Each token decodes a short window (tokens since the last emitted text plus the previous
//!   ones as context) instead of the whole completion: TGI's and vLLM's prefix / read offsets.
//! - Text is emitted in whole characters only (byte-level BPE can split one), so the pieces
//!   concatenate to the full decode.

use super::TokenizerBundle;
use crate::error::Result;

/// The state of one stream of generated ids.
#[derive(Clone, Debug, Default)]
pub struct TextStream {
    /// Start of the decode window: ids before it are never decoded again.
    prefix: usize,
    /// Ids up to here are in `text`.
    read: usize,
    /// Everything emitted so far.
    text: String,
}

impl TextStream {
    pub fn new() -> Self {
        TextStream::default()
    }

    /// Everything emitted so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// At the end of the stream: the rest of the text, whole characters or not. It comes from
    /// one decode of all the ids, so `text()` is then the full decode even where a window
    /// could not be extended.
    pub fn finish(&mut self, tok: &TokenizerBundle, ids: &[u32]) -> Result<&str> {
        let start = self.text.len();
        let full = tok.decode(ids, false)?;
        if full.len() > start && full.starts_with(&self.text) {
            self.text.push_str(&full[start..]);
        }
        self.prefix = self.read.min(ids.len());
        self.read = ids.len();
        Ok(&self.text[start..])
    }

    /// `ids` is the completion so far (earlier ids unchanged, new ones appended). Returns the
    /// new text that is whole characters, possibly empty.
    pub fn push(&mut self, tok: &TokenizerBundle, ids: &[u32]) -> Result<&str> {
        let start = self.text.len();
        if ids.len() <= self.read {
            return Ok("");
        }
        let before = tok.decode(&ids[self.prefix..self.read], false)?;
        let now = tok.decode(&ids[self.prefix..], false)?;
        // a window whose decode does not extend the previous one (a decoder merging across
        // the boundary) waits for more ids, as does a split character
        if now.len() > before.len() && now.starts_with(&before) && !now.ends_with('\u{FFFD}') {
            self.text.push_str(&now[before.len()..]);
            self.prefix = self.read;
            self.read = ids.len();
        }
        Ok(&self.text[start..])
    }
}
