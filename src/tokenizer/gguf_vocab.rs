//! tokenizer.json built from a GGUF vocabulary.
//!
//! - "gpt2": byte-level BPE with explicit merges, the pre-tokenizer chosen by
//!   `tokenizer.ggml.pre`; "llama": SentencePiece pieces with scores and `<0xNN>` byte tokens,
//!   rebuilt as BPE with byte fallback.
//! - Token types follow llama.cpp: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
//!   6 byte.

use crate::checkpoint::gguf::{GgufFile, Value};
use crate::error::{Error, Result};
use serde_json::{json, Map, Value as Json};
use std::collections::HashMap;

const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;
const TYPE_BYTE: i64 = 6;

/// The pre-tokenizers we know how to express in HF terms, keyed by `tokenizer.ggml.pre`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PreTokenizer {
    /// GPT-2 regex (HF ByteLevel with use_regex).
    Gpt2,
    /// Individual digits, then the GPT-2 regex (StarCoder, SmolLM).
    DigitsGpt2,
    /// Llama-3 regex (numbers in runs of up to 3).
    Llama3,
    /// Qwen2 regex (single digits).
    Qwen2,
}

impl PreTokenizer {
    fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" | "trillion" => {
                PreTokenizer::Gpt2
            }
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva" => PreTokenizer::DigitsGpt2,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => PreTokenizer::Llama3,
            "qwen2" | "stablelm2" | "deepseek-r1-qwen" => PreTokenizer::Qwen2,
            other => {
                return Err(Error::Tokenizer(format!(
                "GGUF pre-tokenizer `{other}` is not supported (known: gpt2, smollm, starcoder, \
                     llama-bpe, qwen2 and their aliases)"
            )))
            }
        })
    }

    fn to_json(self) -> Json {
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
        match self {
            PreTokenizer::Gpt2 => byte_level(true),
            PreTokenizer::DigitsGpt2 => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            PreTokenizer::Llama3 => json!({"type": "Sequence", "pretokenizers": [
                split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
                byte_level(false)]}),
            PreTokenizer::Qwen2 => json!({"type": "Sequence", "pretokenizers": [
                split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
                byte_level(false)]}),
        }
    }
}

pub struct GgufVocab {
    pub json: String,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub eos_id: Option<u32>,
}

fn int_array(g: &GgufFile, key: &str, n: usize) -> Result<Vec<i64>> {
    match g.get(key) {
        None => Ok(vec![1; n]),
        Some(Value::Array(v)) if v.len() == n => v
            .iter()
            .map(|x| match x {
                Value::I32(i) => Ok(*i as i64),
                other => other.as_u64().map(|u| u as i64).ok_or(Error::GgufBadValue {
                    key: key.into(),
                    expected: "an array of integers",
                }),
            })
            .collect(),
        Some(_) => Err(Error::GgufBadValue {
            key: key.into(),
            expected: "one integer per token",
        }),
    }
}

fn float_array(g: &GgufFile, key: &str, n: usize) -> Result<Vec<f32>> {
    match g.get(key) {
        Some(Value::Array(v)) if v.len() == n => v
            .iter()
            .map(|x| {
                x.as_f64().map(|f| f as f32).ok_or(Error::GgufBadValue {
                    key: key.into(),
                    expected: "an array of floats",
                })
            })
            .collect(),
        Some(_) => Err(Error::GgufBadValue {
            key: key.into(),
            expected: "one score per token",
        }),
        None => Err(Error::GgufMissingKey(key.into())),
    }
}

fn added_token(id: usize, content: &str, special: bool) -> Json {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": !special, "special": special})
}

/// Merges for a SentencePiece vocabulary: every split of a piece into two pieces of the vocab,
/// ranked by the merged piece's score (HF `SentencePieceExtractor`).
fn spm_merges(tokens: &[&str], scores: &[f32], types: &[i64]) -> Vec<Json> {
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut merges: Vec<(usize, usize, f32)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        if types[i] == TYPE_CONTROL || types[i] == TYPE_BYTE {
            continue;
        }
        let mut local = Vec::new();
        for (split, _) in piece.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (ids.get(&piece[..split]), ids.get(&piece[split..])) {
                local.push((l, r, scores[i]));
            }
        }
        local.sort_by_key(|&(l, r, _)| (l, r));
        merges.extend(local);
    }
    merges.sort_by(|a, b| b.2.total_cmp(&a.2));
    merges
        .into_iter()
        .map(|(l, r, _)| json!([tokens[l], tokens[r]]))
        .collect()
}

pub fn build(g: &GgufFile) -> Result<GgufVocab> {
    let model = g.get_str("tokenizer.ggml.model")?;
    let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
    let n = tokens.len();
    let types = int_array(g, "tokenizer.ggml.token_type", n)?;
    let id_of = |key: &str| -> Result<Option<u32>> {
        match g.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(id) if (id as usize) < n => Ok(Some(id as u32)),
                _ => Err(Error::GgufBadValue {
                    key: key.into(),
                    expected: "a token id inside the vocabulary",
                }),
            },
        }
    };
    let bos_id = id_of("tokenizer.ggml.bos_token_id")?;
    let eos_id = id_of("tokenizer.ggml.eos_token_id")?;
    let unk_id = id_of("tokenizer.ggml.unknown_token_id")?;
    let add_bos = match g.get("tokenizer.ggml.add_bos_token") {
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(Error::GgufBadValue {
                key: "tokenizer.ggml.add_bos_token".into(),
                expected: "a bool",
            })
        }
        None => model == "llama",
    };

    let mut vocab = Map::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.to_string()).or_insert(json!(i));
    }
    let added: Vec<Json> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types[*i] == TYPE_CONTROL || types[*i] == TYPE_USER_DEFINED)
        .map(|(i, t)| added_token(i, t, types[i] == TYPE_CONTROL))
        .collect();
    let bos_token = bos_id.map(|i| tokens[i as usize].to_string());
    let eos_token = eos_id.map(|i| tokens[i as usize].to_string());

    let (model_json, normalizer, pre_tokenizer, decoder, base_post) = match model {
        "gpt2" => {
            let pre =
                PreTokenizer::from_name(g.get_str("tokenizer.ggml.pre").unwrap_or("default"))?;
            let merges = g.get_str_array("tokenizer.ggml.merges")?;
            let model = json!({"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": pre == PreTokenizer::Llama3,
                "vocab": vocab, "merges": merges});
            let post = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
            let dec = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (model, Json::Null, pre.to_json(), dec, Some(post))
        }
        "llama" => {
            let scores = float_array(g, "tokenizer.ggml.scores", n)?;
            let add_space = match g.get("tokenizer.ggml.add_space_prefix") {
                Some(Value::Bool(b)) => *b,
                _ => true,
            };
            let merges = spm_merges(&tokens, &scores, &types);
            let model = json!({"type": "BPE", "dropout": null,
                "unk_token": unk_id.map(|i| tokens[i as usize]), "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                "ignore_merges": false, "vocab": vocab, "merges": merges});
            let mut norm =
                vec![json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"})];
            let mut dec = vec![
                json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if add_space {
                norm.insert(0, json!({"type": "Prepend", "prepend": "\u{2581}"}));
                dec.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            (
                model,
                json!({"type": "Sequence", "normalizers": norm}),
                Json::Null,
                json!({"type": "Sequence", "decoders": dec}),
                None,
            )
        }
        other => {
            return Err(Error::Tokenizer(format!(
                "GGUF tokenizer model `{other}` is not supported (gpt2, llama)"
            )))
        }
    };

    let bos_post = match (add_bos, &bos_token, bos_id) {
        (true, Some(tok), Some(id)) => Some(json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": tok, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {tok.as_str(): {"id": tok, "ids": [id], "tokens": [tok]}}})),
        _ => None,
    };
    let post = match (base_post, bos_post) {
        (Some(a), Some(b)) => json!({"type": "Sequence", "processors": [a, b]}),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => Json::Null,
    };

    let tj = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added, "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
        "post_processor": post, "decoder": decoder, "model": model_json,
    });
    let json = serde_json::to_string(&tj).map_err(|e| Error::Json(e.to_string()))?;
    Ok(GgufVocab {
        json,
        chat_template: g
            .get("tokenizer.chat_template")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        bos_token,
        eos_token,
        eos_id,
    })
}
