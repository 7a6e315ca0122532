//! OpenAI request parsing without a server: every supported field lands where it should, the
//! prompt's accepted shapes, chat content parts, and seeds (given ones kept, missing ones
//! fresh per request).

use ferroq::server::api::{parse, Endpoint, Prompt};
use ferroq::tokenizer::ChatMessage;

#[test]
fn completion_fields_are_parsed() {
    let body = br#"{"model":"m","prompt":"Hello","max_tokens":7,"temperature":0.5,"top_p":0.9,
        "top_k":-1,"repetition_penalty":1.1,"seed":-3,"stop":["\n","END"],"stream":true,
        "stream_options":{"include_usage":true},"ignore_eos":true,"n":1,"logprobs":null,"user":"x"}"#;
    let r = parse(Endpoint::Completions, body).expect("parse");
    assert_eq!(r.model.as_deref(), Some("m"));
    assert_eq!(r.prompt, Prompt::Text("Hello".into()));
    assert_eq!(r.max_tokens, Some(7));
    assert_eq!(
        (r.sampling.temperature, r.sampling.top_p, r.sampling.top_k),
        (0.5, 0.9, 0)
    );
    assert!((r.sampling.repetition_penalty - 1.1).abs() < 1e-6);
    assert_eq!(r.sampling.seed, (-3i64) as u64);
    assert_eq!(r.stop, vec!["\n".to_string(), "END".to_string()]);
    assert!(r.stream && r.stream_usage && r.ignore_eos);
}

#[test]
fn prompt_shapes() {
    let p = |b: &str| parse(Endpoint::Completions, b.as_bytes()).map(|r| r.prompt);
    assert_eq!(p(r#"{"prompt":["Hi"]}"#), Ok(Prompt::Text("Hi".into())));
    assert_eq!(
        p(r#"{"prompt":[1,2,3]}"#),
        Ok(Prompt::Tokens(vec![1, 2, 3]))
    );
    assert_eq!(p(r#"{"prompt":[[4,5]]}"#), Ok(Prompt::Tokens(vec![4, 5])));
    let batched = p(r#"{"prompt":["a","b"]}"#).expect_err("batched");
    assert!(batched.message.contains("one prompt per request"));
    assert!(p(r#"{"prompt":[1,-2]}"#).is_err());
    assert!(p(r#"{"prompt":{}}"#).is_err());
}

#[test]
fn chat_messages_and_defaults() {
    let body = br#"{"messages":[{"role":"system","content":"Be brief."},
        {"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}]}],
        "max_completion_tokens":5}"#;
    let r = parse(Endpoint::Chat, body).expect("parse");
    assert_eq!(
        r.prompt,
        Prompt::Chat(vec![
            ChatMessage::system("Be brief."),
            ChatMessage::user("Hi there")
        ])
    );
    assert_eq!(r.max_tokens, Some(5));
    // OpenAI's defaults: temperature 1, top_p 1, not streamed
    assert_eq!((r.sampling.temperature, r.sampling.top_p), (1.0, 1.0));
    assert!(!r.stream && r.stop.is_empty());
    let image =
        br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#;
    let e = parse(Endpoint::Chat, image).expect_err("image part");
    assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
}

#[test]
fn requests_without_a_seed_get_different_ones() {
    let a = parse(Endpoint::Completions, br#"{"prompt":"x"}"#).expect("a");
    let b = parse(Endpoint::Completions, br#"{"prompt":"x"}"#).expect("b");
    assert_ne!(a.sampling.seed, b.sampling.seed);
    let s = parse(Endpoint::Completions, br#"{"prompt":"x","seed":42}"#).expect("s");
    assert_eq!(s.sampling.seed, 42);
}
