//! Tokenizers built from GGUF metadata: the real SmolLM2 vocabulary (byte-level BPE, "smollm"
//! pre-tokenizer, ChatML specials, chat template) and a hand-made SentencePiece-style vocabulary
//! (byte fallback, merges derived from scores).

mod common;

use common::*;
use ferroq::checkpoint::gguf::GgufFile;
use ferroq::tokenizer::{ChatMessage, TokenizerBundle};

fn smollm() -> (GgufFile, TokenizerBundle) {
    let f = GgufFile::open(real_gguf()).expect("open real model");
    let t = TokenizerBundle::from_gguf(&f).expect("tokenizer");
    (f, t)
}

#[test]
fn round_trip_mixed_text() {
    let (_f, t) = smollm();
    let texts = [
        "The capital of France is Paris.",
        "digits 1234567890 and 3.14159, -42",
        "unicode: café, naïve, 日本語, emoji 🦀🚀, Ελληνικά",
        "whitespace   runs\t\ttabs\n\n\nnewlines    end  ",
        "  leading spaces and trailing\n",
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    ];
    for text in texts {
        let ids = t.encode(text).expect("encode");
        assert!(!ids.is_empty());
        assert_eq!(t.decode(&ids, true).expect("decode"), text, "ids {ids:?}");
    }
}

#[test]
fn digits_are_split_individually() {
    let (_f, t) = smollm();
    let ids = t.encode("2024").expect("encode");
    assert_eq!(ids.len(), 4, "smollm pre-tokenizer splits digits: {ids:?}");
    let one = t.encode("7").expect("encode");
    assert_eq!(one.len(), 1);
}

#[test]
fn special_tokens_match_gguf_ids() {
    let (f, t) = smollm();
    let tokens = f.get_str_array("tokenizer.ggml.tokens").expect("tokens");
    let bos = f.get_u64("tokenizer.ggml.bos_token_id").expect("bos") as u32;
    let eos = f.get_u64("tokenizer.ggml.eos_token_id").expect("eos") as u32;
    assert_eq!(t.token_id("<|im_start|>"), Some(bos));
    assert_eq!(t.token_id("<|im_end|>"), Some(eos));
    assert_eq!(t.bos_token.as_deref(), Some(tokens[bos as usize]));
    assert!(t.eos_ids.contains(&eos));
    // every control token is one piece that maps to its own id
    for (i, name) in tokens.iter().enumerate().take(17) {
        assert_eq!(t.encode(name).expect("encode"), vec![i as u32], "{name}");
    }
    let ids = t.encode("<|im_start|>user\nhi<|im_end|>").expect("encode");
    assert_eq!(ids.first(), Some(&bos));
    assert_eq!(ids.last(), Some(&eos));
    // SmolLM2 adds no BOS to plain text
    assert_ne!(t.encode("hi").expect("encode")[0], bos);
    // skipping special tokens on decode
    assert_eq!(t.decode(&ids, false).expect("decode"), "user\nhi");
}

#[test]
fn chat_template_renders_chatml() {
    let (_f, t) = smollm();
    let s = t
        .apply_chat_template(&[ChatMessage::user("What is 2+2?")])
        .expect("render");
    assert!(s.starts_with("<|im_start|>system\n"), "{s}");
    assert!(
        s.ends_with("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"),
        "{s}"
    );
    let s = t
        .apply_chat_template(&[ChatMessage::system("Be brief."), ChatMessage::user("Hi")])
        .expect("render");
    assert_eq!(s, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

#[test]
fn broken_template_is_a_template_error() {
    let r = ferroq::tokenizer::chat::render("{% for m in messages %}", &[], true, None, None);
    assert!(matches!(r, Err(ferroq::Error::Template(_))));
}

/// A SentencePiece-style vocabulary: <unk> <s> </s>, 256 byte tokens, then pieces with scores.
fn spm_gguf(add_bos: bool) -> Vec<u8> {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    for b in 0..256 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    let pieces = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "llo", "hello", "▁hello", "▁w", "or",
        "▁wor", "ld", "▁world",
    ];
    let mut scores = vec![0.0f32; tokens.len()];
    for (i, p) in pieces.iter().enumerate() {
        tokens.push(p.to_string());
        types.push(1);
        scores.push(-(i as f32)); // later pieces rank lower, as in real SPM vocabularies
    }
    let meta = vec![
        ("general.architecture", Meta::Str("llama".into())),
        ("tokenizer.ggml.model", Meta::Str("llama".into())),
        ("tokenizer.ggml.tokens", Meta::StrArr(tokens)),
        ("tokenizer.ggml.scores", Meta::F32Arr(scores)),
        ("tokenizer.ggml.token_type", Meta::I32Arr(types)),
        ("tokenizer.ggml.bos_token_id", Meta::U32(1)),
        ("tokenizer.ggml.eos_token_id", Meta::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Meta::U32(0)),
        ("tokenizer.ggml.add_bos_token", Meta::Bool(add_bos)),
    ];
    gguf_bytes(&meta, &[])
}

#[test]
fn sentencepiece_vocab_with_byte_fallback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("spm.gguf");
    std::fs::write(&p, spm_gguf(true)).expect("write");
    let f = GgufFile::open(&p).expect("open");
    let t = TokenizerBundle::from_gguf(&f).expect("tokenizer");
    let id = |s: &str| t.token_id(s).expect(s);
    let ids = t.encode("hello world").expect("encode");
    assert_eq!(ids, vec![1, id("▁hello"), id("▁world")]);
    // é is not in the vocabulary: UTF-8 bytes C3 A9 via byte fallback
    let ids = t.encode("hé").expect("encode");
    assert_eq!(ids, vec![1, id("▁"), id("h"), id("<0xC3>"), id("<0xA9>")]);
    assert_eq!(t.decode(&ids, false).expect("decode"), "hé");
    assert_eq!(
        t.decode(&t.encode("hello  world").expect("e"), false)
            .expect("d"),
        "hello  world"
    );
}

#[test]
fn unknown_pre_tokenizer_is_named() {
    let meta = vec![
        ("tokenizer.ggml.model", Meta::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Meta::Str("martian".into())),
        ("tokenizer.ggml.tokens", Meta::StrArr(vec!["a".into()])),
        ("tokenizer.ggml.merges", Meta::StrArr(vec![])),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("x.gguf");
    std::fs::write(&p, gguf_bytes(&meta, &[])).expect("write");
    let f = GgufFile::open(&p).expect("open");
    match TokenizerBundle::from_gguf(&f) {
        Err(ferroq::Error::Tokenizer(m)) => assert!(m.contains("martian"), "{m}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("unknown pre-tokenizer accepted"),
    }
}

/// Streaming detokenization: fed one id at a time, the pieces concatenate to the full decode,
/// and no piece but the last ends inside a character — for the byte-level BPE of the real
/// model (emoji and CJK split across tokens) and for a SentencePiece vocabulary (leading-space
/// pieces, byte fallback).
#[test]
fn text_stream_pieces_concatenate_to_the_full_decode() {
    use ferroq::tokenizer::TextStream;
    let check = |t: &TokenizerBundle, ids: &[u32], what: &str| {
        let full = t.decode(ids, false).expect("decode");
        let mut stream = TextStream::new();
        let mut pieces = Vec::new();
        for n in 1..=ids.len() {
            let p = stream.push(t, &ids[..n]).expect("push").to_string();
            assert!(
                !p.ends_with('\u{FFFD}'),
                "{what}: piece {p:?} splits a character"
            );
            pieces.push(p);
        }
        if what.contains('🦀') {
            assert!(
                pieces.iter().any(String::is_empty),
                "{what}: expected a character split across ids to be held back"
            );
        }
        pieces.push(stream.finish(t, ids).expect("finish").to_string());
        assert_eq!(pieces.concat(), full, "{what}");
        assert_eq!(stream.text(), full, "{what}");
        // pushing the same ids again adds nothing
        assert_eq!(stream.push(t, ids).expect("again"), "");
    };
    let (_f, t) = smollm();
    for text in [
        "Hello world! 🦀🚀 Grüße, 你好世界 — naïve café.",
        "  leading spaces\n\nand\ttabs  ",
        "",
    ] {
        let ids = t.encode(text).expect("encode");
        check(&t, &ids, text);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("spm.gguf");
    std::fs::write(&p, spm_gguf(false)).expect("write");
    let f = GgufFile::open(&p).expect("open");
    let spm = TokenizerBundle::from_gguf(&f).expect("tokenizer");
    let ids = spm.encode("hello world hé hello").expect("encode");
    check(&spm, &ids, "sentencepiece");
}

/// A tokenizer.json built like `common::byte_tokenizer`'s, with `edit` applied to its JSON.
fn edited_tokenizer(edit: impl Fn(&mut serde_json::Value)) -> ferroq::Result<TokenizerBundle> {
    let mut j: serde_json::Value =
        serde_json::from_str(&common::byte_tokenizer().json).expect("json");
    edit(&mut j);
    let json = j.to_string();
    Ok(TokenizerBundle {
        tokenizer: TokenizerBundle::from_json(json.clone())?,
        json,
        chat_template: None,
        bos_token: None,
        eos_token: None,
        eos_ids: vec![],
    })
}

/// Hostile tokenizer files: a post-processor naming a special token the vocabulary lacks is an
/// error, not a panic out of the tokenizers crate; a huge fixed padding is switched off rather
/// than allocated on every encode.
#[test]
fn hostile_tokenizer_files_are_errors_or_harmless() {
    let bad_post = edited_tokenizer(|j| {
        j["post_processor"] = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {}
        });
    });
    match bad_post {
        Err(e) => assert!(e.to_string().contains("tokenizer"), "{e}"),
        Ok(t) => {
            let e = t
                .encode("abc")
                .expect_err("encoding with an undefined special token");
            assert!(e.to_string().contains("tokenizer"), "{e}");
        }
    }
    let padded = edited_tokenizer(|j| {
        j["padding"] = serde_json::json!({"strategy": {"Fixed": 100000000}, "direction": "Right",
            "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "<0>"});
    })
    .expect("a padded tokenizer loads");
    assert_eq!(padded.encode("abc").expect("encode").len(), 3);
}

/// A chat template that would run without bound (10⁵ × 10⁵ loop iterations) is an error.
#[test]
fn a_runaway_chat_template_is_an_error() {
    let tpl = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}";
    let e = ferroq::tokenizer::chat::render(tpl, &[ChatMessage::user("hi")], true, None, None)
        .expect_err("a runaway template rendered");
    assert!(
        e.to_string().to_lowercase().contains("fuel") || e.to_string().contains("render"),
        "{e}"
    );
}
