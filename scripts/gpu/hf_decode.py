"""transformers' LlamaForCausalLM with Llama-3.1-8B's config and random BF16 weights: prefill
tok/s over a 2048-token prompt and batch-1 decode tok/s (generate with a static cache, greedy,
128 new tokens), the peer of examples/cuda_decode_bench.rs. LAYERS in argv[1]
(default 32). Prints one markdown row per test."""
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

LAYERS = int(sys.argv[1]) if len(sys.argv) > 1 else 32
PROMPT, GEN = 2048, 128


def main():
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=LAYERS,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                      rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=8192,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, PROMPT), device="cuda")
    with torch.no_grad():
        model(ids[:, :128])
        torch.cuda.synchronize()
        t = time.perf_counter()
        model(ids)
        torch.cuda.synchronize()
        pp = PROMPT / (time.perf_counter() - t)
        kw = dict(max_new_tokens=GEN, min_new_tokens=GEN, do_sample=False,
                  cache_implementation="static", pad_token_id=0)
        model.generate(ids, **{**kw, "max_new_tokens": 8, "min_new_tokens": 8})
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(ids, **{**kw, "max_new_tokens": 1, "min_new_tokens": 1})
        torch.cuda.synchronize()
        t_first = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(ids, **kw)
        torch.cuda.synchronize()
        t_all = time.perf_counter() - t
    tg = (GEN - 1) / (t_all - t_first)
    print(f"transformers {__import__('transformers').__version__}, torch {torch.__version__}, {LAYERS} layers")
    print("| model | test | tok/s |")
    print("|---|---|---|")
    print(f"| transformers LlamaForCausalLM bf16 | pp{PROMPT} | {pp:.1f} |")
    print(f"| transformers LlamaForCausalLM bf16 (static cache) | tg{GEN} | {tg:.1f} |")


if __name__ == "__main__":
    main()
