#!/usr/bin/env python3
"""GGUFs of the transformers fixtures, made by llama.cpp's own converter (run by hand).

    /tmp/refvenv/bin/python scripts/hf_reference_gguf.py LLAMA_CPP_DIR tests/fixtures/hf [NAME ...]

LLAMA_CPP_DIR is llama.cpp's source tree (scripts/bench-vs-llamacpp.sh unpacks it from the
llama-cpp-python sdist: .../vendor/llama.cpp). Tensors, their permutations and the
hyper-parameters are the converter's own; only its pre-tokenizer check is bypassed, since it
recognises real tokenizers by a hash and the fixtures' word-level tokenizer is none of them
(the tokens are fed to the tests as ids), and Gemma 2's vocabulary is read from tokenizer.json
as for Gemma 3 (its converter class wants a SentencePiece tokenizer.model, which the fixtures
do not have). Each fixture dir (or each NAME given) gets model.bf16.gguf beside it
(the weights are bf16 already); a fixture the converter refuses (the Qwen2 one: its vocabulary
check) is reported and skipped. The converter records no sliding window for Mistral (written
as `llama`) or Qwen3, so those GGUFs are tested against their checkpoints run without one.
"""
import sys
from pathlib import Path

llama_cpp = Path(sys.argv[1]).resolve()
fixtures = Path(sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/hf").resolve()
sys.path.insert(0, str(llama_cpp))
sys.path.insert(1, str(llama_cpp / "gguf-py"))

import convert_hf_to_gguf  # noqa: E402
from conversion.base import TextModel  # noqa: E402
from conversion.gemma import Gemma2Model  # noqa: E402

TextModel.get_vocab_base_pre = lambda self, tokenizer: "default"
Gemma2Model.set_vocab = TextModel._set_vocab_gpt2

only = set(sys.argv[3:])
for d in sorted(p for p in fixtures.iterdir() if (p / "config.json").is_file()):
    if only and d.name not in only:
        continue
    out = d / "model.bf16.gguf"
    sys.argv = ["convert_hf_to_gguf.py", str(d), "--outfile", str(out), "--outtype", "bf16"]
    try:
        convert_hf_to_gguf.main()
    except Exception as e:  # the converter's own refusal, e.g. a vocabulary it cannot take
        print(f"{d.name}: not converted: {e!r}")
        continue
    print(f"{d.name}: {out.stat().st_size} bytes")
