#!/usr/bin/env python3
"""Reference fixtures from Hugging Face transformers (torch, fp32, CPU) for ferroq's model tests.

Run by hand, not in CI (it needs torch + transformers >= 5; the fixtures it writes are
committed and tests/hf_reference.rs checks ferroq against them):

    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch transformers safetensors
    /tmp/refvenv/bin/python scripts/hf_reference.py tests/fixtures/hf [VARIANT ...]

(naming variants records only those; each variant's seed is its place in VARIANTS, so the
others' fixtures stay as they are)

For each variant it builds a small randomly initialised checkpoint (several layers, head dims
64 and 128, GQA, a sliding window shorter than the prompt, RoPE scalings, biases, a 320-token
word-level tokenizer.json), saves it with `save_pretrained` in bfloat16 (so the config is
written as transformers 5 writes it, `rope_parameters` and all), reloads it in float32 and
records on fixed token ids: the log-probability of every next token, the last position's
log-probabilities over the vocabulary, and the greedy continuation. It also records, for
each RoPE type, the inverse frequencies and attention factor transformers computes.
"""
import json
import math
import sys
from pathlib import Path

import torch
import transformers
from transformers import (AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, LlamaConfig,
                          MistralConfig, Olmo2Config, Phi3Config, Qwen2Config, Qwen3Config)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

VOCAB = 320
PROMPT = 24
GREEDY = 12


def tokenizer_json():
    """A word-level tokenizer over words w0 .. w319 (ids are what the tests feed)."""
    vocab = {f"w{i}": i for i in range(VOCAB)}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": f"w{i}", "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}
            for i in (1, 2)
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": None,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": False},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"},
    }


def common(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    base.update(kw)
    return base


VARIANTS = {
    # Llama 3.1-style RoPE (a short original context so many frequencies are scaled), the
    # attention_bias (q/k/v and o_proj) and mlp_bias switches, head dim 64, GQA 4/2
    "llama3-bias": LlamaConfig(**common(
        head_dim=64, attention_bias=True, mlp_bias=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16})),
    # Mistral: head dim 128, one kv head, a sliding window of 8 over a 24-token prompt
    "mistral-window": MistralConfig(**common(
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=128,
        sliding_window=8, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    # Qwen2: q/k/v biases, tied embeddings, YaRN, a window of 6 on layers 1.. only
    "qwen2-yarn-window": Qwen2Config(**common(
        tie_word_embeddings=True, use_sliding_window=True, sliding_window=6,
        max_window_layers=1,
        rope_parameters={"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0,
                         "original_max_position_embeddings": 16})),
    # Llama with linear position interpolation, GQA 4/1, head dim 16 (hidden / heads)
    "llama-linear": LlamaConfig(**common(
        num_key_value_heads=1, tie_word_embeddings=True,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})),
    # Qwen3: QK-norm, head dim 128 (explicit), attention_bias on q/k/v/o, a window of 8 on
    # layers 0 and 2 (layer_types)
    "qwen3-qknorm": Qwen3Config(**common(
        head_dim=128, num_attention_heads=2, num_key_value_heads=1, attention_bias=True,
        use_sliding_window=True, sliding_window=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    # Phi-3: fused qkv_proj / gate_up_proj, LongRoPE past a 16-token original context (the
    # long factors and sqrt(1 + ln 4 / ln 16) on cos / sin), a window of 10 on every layer
    "phi3-longrope": Phi3Config(**common(
        num_attention_heads=2, num_key_value_heads=1, sliding_window=10, pad_token_id=0,
        original_max_position_embeddings=16,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                         "short_factor": [1.0 + 0.1 * i for i in range(16)],
                         "long_factor": [1.0 + 0.7 * i for i in range(16)]})),
    # Gemma 2: four (1 + w) norms per block, GeGLU, embeddings times sqrt(64), scores scaled by
    # 1/sqrt(48) (query_pre_attn_scalar, not head_dim 64) and soft-capped at 5, logits at 10
    # (caps low enough to bite on these weights), a window of 8 on layers 0 and 2
    "gemma2-softcap": Gemma2Config(**common(
        head_dim=64, tie_word_embeddings=True, sliding_window=8, query_pre_attn_scalar=48,
        attn_logit_softcapping=5.0, final_logit_softcapping=10.0, pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    # Gemma 3 text: Gemma 2's block with (1 + w) QK-norm, head dim 128, local layers 0 and 2
    # (window 8, RoPE base 1e4) and a global layer 1 (base 1e6, linear scaling x4)
    "gemma3-local-global": Gemma3TextConfig(**common(
        head_dim=128, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
        sliding_window=8, query_pre_attn_scalar=64, pad_token_id=0,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
    # OLMo 2: no pre-norms, post-norms on attention and MLP outputs, QK-norm over all of q
    # and k, head dim 64 (hidden 128 / 2 heads), GQA 2/1
    "olmo2-postnorm": Olmo2Config(**common(
        hidden_size=128, num_attention_heads=2, num_key_value_heads=1, pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0})),
}

# RoPE types checked on their frequencies alone (head_dim 64, the context a workspace serves)
ROPE_ONLY = {
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "yarn-mscale": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0,
                    "original_max_position_embeddings": 16, "mscale": 0.707,
                    "mscale_all_dim": 0.5, "beta_fast": 16.0, "beta_slow": 2.0,
                    "truncate": False},
    "longrope": {"rope_type": "longrope", "rope_theta": 10000.0,
                 "original_max_position_embeddings": 16,
                 "short_factor": [1.0 + 0.05 * i for i in range(32)],
                 "long_factor": [1.0 + 0.5 * i for i in range(32)]},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192},
}


def randomize(model, seed):
    """Weights large enough that logits spread (the default init gives near-uniform ones),
    rounded to bfloat16 so the saved checkpoint holds exactly what the reference runs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=g)
            elif name.endswith(".bias"):
                v = 0.2 * torch.randn(p.shape, generator=g)
            else:
                v = torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]) * 1.5
            p.copy_(v.to(torch.bfloat16).to(torch.float32))


def record(name, cfg, out_dir, seed):
    d = out_dir / name
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    randomize(model, seed)
    model.to(torch.bfloat16).save_pretrained(d)
    (d / "tokenizer.json").write_text(json.dumps(tokenizer_json()))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "w1", "eos_token": "w2"}))
    # the reference runs the saved checkpoint, reloaded in float32
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(1000 + seed)
    ids = torch.randint(3, VOCAB, (1, PROMPT), generator=g)
    with torch.no_grad():
        logits = model(ids).logits[0].double()
        lp = torch.log_softmax(logits, dim=-1)
        out = model.generate(ids, max_new_tokens=GREEDY, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    ref = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokens": ids[0].tolist(),
        "next_logprobs": [lp[t, ids[0, t + 1]].item() for t in range(PROMPT - 1)],
        "last_logprobs": lp[-1].tolist(),
        "greedy": out[0, PROMPT:].tolist(),
    }
    (d / "reference.json").write_text(json.dumps(ref))
    print(f"{name}: {sum(f.stat().st_size for f in d.iterdir())} bytes, greedy {ref['greedy']}")


def rope_reference(out_dir):
    rows = {}
    for name, rp in ROPE_ONLY.items():
        cfg = LlamaConfig(**common(head_dim=64, max_position_embeddings=64, rope_parameters=rp))
        fn = ROPE_INIT_FUNCTIONS[rp["rope_type"]]
        for context in (16, 64):
            # dynamic and longrope take the length in use (HF: the running sequence length)
            inv, att = fn(cfg, "cpu", seq_len=context)
            rows[f"{name}@{context}"] = {
                "config": cfg.to_dict()["rope_parameters"],
                "context": context,
                "inv_freq": inv.double().tolist(),
                "attention_factor": float(att),
            }
    (out_dir / "rope.json").write_text(json.dumps(rows, indent=1))


def main():
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/hf")
    only = set(sys.argv[2:])
    unknown = only - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variants {sorted(unknown)} (known: {list(VARIANTS)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    for seed, (name, cfg) in enumerate(VARIANTS.items()):
        if not only or name in only:
            record(name, cfg, out_dir, seed + 1)
    if not only:
        rope_reference(out_dir)


if __name__ == "__main__":
    main()
