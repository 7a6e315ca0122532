//! Fuzz harnesses: arbitrary bytes fed to ferroq's input readers the way its commands feed them.
//!
//! - A harness returns for every input ferroq refuses with an error or accepts; a panic, an
//!   abort, a hang or a runaway allocation is the bug the fuzzer reports.
//! - The AFL targets (`src/bin/fuzz_*.rs`) and the crash regressions
//!   (`tests/fuzz_regressions.rs` in the main crate) share these functions.
//! - The file readers get real files in a per-process scratch directory, so the memory-mapped
//!   paths the commands use are the ones fuzzed.

use ferroq::backend::cpu::CpuBackend;
use ferroq::checkpoint::config::ModelConfig;
use ferroq::checkpoint::gguf::{weights::GgufWeights, GgufFile};
use ferroq::checkpoint::site::decoder_linears;
use ferroq::model::llama::{LlamaModel, Logits};
use ferroq::ptq::recipe::{selected, Processor, Recipe};
use ferroq::server::api::{self, Endpoint, Prompt};
use ferroq::tokenizer::TokenizerBundle;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One fuzzed reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A GGUF file: header, metadata, tensor table, tokenizer, config, weights, a forward pass.
    Gguf,
    /// An HF directory: `config.json` (plain or compressed-tensors) and `model.safetensors`.
    /// Input: a little-endian u32 length, that many bytes of config.json, then the safetensors
    /// file; the tokenizer is a fixed valid one.
    HfDir,
    /// A quantization recipe (YAML).
    Recipe,
    /// An OpenAI request body; the first byte picks the endpoint (odd: chat).
    Request,
}

impl Target {
    pub const ALL: [Target; 4] = [Target::Gguf, Target::HfDir, Target::Recipe, Target::Request];

    /// The directory name of this target's seeds and regressions.
    pub fn name(self) -> &'static str {
        match self {
            Target::Gguf => "gguf",
            Target::HfDir => "hf_dir",
            Target::Recipe => "recipe",
            Target::Request => "request",
        }
    }

    pub fn run(self, data: &[u8]) {
        match self {
            Target::Gguf => gguf(data),
            Target::HfDir => hf_dir(data),
            Target::Recipe => recipe(data),
            Target::Request => request(data),
        }
    }
}

/// A directory of this process's own (fuzzers run several processes side by side).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("ferroq-fuzz-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&d) {
            panic!("cannot create the scratch directory {}: {e}", d.display());
        }
        d
    })
}

fn write(path: &Path, data: &[u8]) {
    if let Err(e) = std::fs::write(path, data) {
        panic!("cannot write {}: {e}", path.display());
    }
}

/// A model that loaded runs a short forward pass: what was accepted must also compute.
fn run_model(m: &LlamaModel<CpuBackend>) {
    let vocab = m.config.vocab_size as u32;
    let Ok(mut s) = m.new_session(4, 8, false) else {
        return;
    };
    let ids = [0, vocab.saturating_sub(1), vocab / 2];
    let _ = m.forward(&mut s, &ids, Logits::Last);
}

fn gguf(data: &[u8]) {
    let p = scratch().join("model.gguf");
    write(&p, data);
    let Ok(file) = GgufFile::open(&p) else {
        return;
    };
    if let Ok(tok) = TokenizerBundle::from_gguf(&file) {
        if let Ok(ids) = tok.encode("Hello 123 wörld!") {
            let _ = tok.decode(&ids, true);
        }
    }
    for t in &file.tensors {
        let _ = file.dequantize(t);
    }
    let Ok(config) = ModelConfig::from_gguf(&file) else {
        return;
    };
    let Ok(src) = GgufWeights::new(&file, config.clone()) else {
        return;
    };
    if let Ok(m) = LlamaModel::load(CpuBackend::new(), config, &src, None) {
        run_model(&m);
    }
}

/// The tokenizer every fuzzed HF directory gets: characters as words, no merges.
pub fn byte_tokenizer_json() -> String {
    // small on purpose: it is rebuilt on every execution of the HF-directory target
    let vocab: serde_json::Map<String, serde_json::Value> = "abcdefghijklmno "
        .chars()
        .enumerate()
        .map(|(i, c)| (c.to_string(), i.into()))
        .chain([("<unk>".to_string(), 16.into())])
        .collect();
    serde_json::json!({"version": "1.0", "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": false},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}})
    .to_string()
}

fn hf_dir(data: &[u8]) {
    let dir = scratch().join("hf");
    static TOKENIZER: OnceLock<()> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        write(
            &dir.join("tokenizer.json"),
            byte_tokenizer_json().as_bytes(),
        );
    });
    let (config, weights) = match data {
        [a, b, c, d, rest @ ..] => {
            let n = (u32::from_le_bytes([*a, *b, *c, *d]) as usize).min(rest.len());
            rest.split_at(n)
        }
        _ => (data, &[][..]),
    };
    write(&dir.join("config.json"), config);
    write(&dir.join("model.safetensors"), weights);
    if let Ok(m) = ferroq::model::open(CpuBackend::new(), &dir, None) {
        run_model(&m.model);
    }
}

fn recipe(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(r) = Recipe::from_yaml(text) else {
        return;
    };
    // what was accepted writes back to a recipe that reads the same
    let Ok(y) = r.to_yaml() else {
        return;
    };
    match Recipe::from_yaml(&y).map(|again| again.to_yaml()) {
        Ok(Ok(y2)) if y2 == y => {}
        other => panic!("recipe did not round-trip: {y:?} became {other:?}"),
    }
    let names = decoder_linears(2);
    for p in &r.processors {
        if let Processor::LinearQuant {
            qconfig,
            include,
            exclude,
        } = p
        {
            let _ = qconfig.weight.to_qconfig();
            if let Some(a) = &qconfig.act {
                let _ = a.qdtype();
            }
            for n in &names {
                let _ = selected(n, include, exclude);
            }
        }
    }
    let _ = r.with_fallback(&names[..1]);
}

fn chat_tokenizer() -> &'static TokenizerBundle {
    static TOK: OnceLock<TokenizerBundle> = OnceLock::new();
    TOK.get_or_init(|| {
        let json = byte_tokenizer_json();
        let tokenizer = match TokenizerBundle::from_json(json.clone()) {
            Ok(t) => t,
            Err(e) => panic!("the fixed tokenizer does not build: {e}"),
        };
        TokenizerBundle {
            tokenizer,
            json,
            chat_template: Some(
                "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
                    .into(),
            ),
            bos_token: None,
            eos_token: None,
            eos_ids: vec![],
        }
    })
}

fn request(data: &[u8]) {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let ep = if first & 1 == 1 {
        Endpoint::Chat
    } else {
        Endpoint::Completions
    };
    let Ok(req) = api::parse(ep, body) else {
        return;
    };
    let _ = req.sampling.validate();
    let tok = chat_tokenizer();
    match &req.prompt {
        Prompt::Text(t) => {
            let _ = tok.encode(t);
        }
        Prompt::Chat(m) => {
            if let Ok(text) = tok.apply_chat_template(m) {
                let _ = tok.encode(&text);
            }
        }
        Prompt::Tokens(_) => {}
    }
}
