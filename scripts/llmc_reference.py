#!/usr/bin/env python3
"""Quantized reference fixtures made by llm-compressor, for ferroq's compressed-tensors reader.

Run by hand, not in CI (the fixtures it writes are committed; tests/llmc_reference.rs checks
ferroq against them):

    /tmp/refvenv/bin/pip install llmcompressor
    /tmp/refvenv/bin/python scripts/llmc_reference.py tests/fixtures/hf tests/fixtures/llmc
    /tmp/refvenv/bin/python scripts/llmc_reference.py --record DIR FLOAT_FIXTURE_DIR ...

The second form records the same forward for checkpoints ferroq wrote (scripts/ferroq_ct.sh
makes them), after checking that transformers reads every tensor of each by its HF name.

For each (fixture, scheme) below it loads the float fixture written by hf_reference.py in
float32, quantizes it with llm-compressor's `oneshot` (no calibration data: RTN weights,
dynamic activations), saves the compressed checkpoint as llm-compressor saves it, reloads it
with transformers + compressed-tensors and records the reloaded model's forward on the
fixture's tokens (next-token log-probabilities, the last position's log-probabilities,
greedy continuation). transformers runs these checkpoints with the weights decompressed and
the activations quantized-dequantized per token, which is what ferroq computes in integer /
FP8 arithmetic.

One rule is changed for the record: compressed-tensors' fake quantization gives a symmetric
int8 activation the scale absmax / 127.5 (half its 255-step range), while vLLM's int8 kernel,
which these checkpoints are made for and ferroq follows, uses absmax / 127. The forward is
recorded with vLLM's rule; the script prints how far compressed-tensors' own rule lands from
it. Likewise W4A16 ("16-bit activations") linears take BF16 inputs in vLLM's and ferroq's
kernels, while transformers here runs them on f32: the forward is recorded with each quantized
linear's input rounded to BF16, and the script prints the f32 forward's distance from it.
(transformers >= 5.25 is needed for the Gemma fixtures; llm-compressor 0.14 installs 5.17,
so install transformers 5.25 and huggingface-hub 2.x over it with --no-deps.)
"""
import json
import shutil
import sys
from pathlib import Path

import compressed_tensors
import compressed_tensors.quantization.lifecycle.forward as ct_forward
import llmcompressor
import torch
import transformers
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier
from transformers import AutoModelForCausalLM

GREEDY = 12
CT_DYNAMIC = ct_forward.compute_dynamic_scales_and_zp


def vllm_dynamic(value, args, module, global_scale=None):
    """Per-token symmetric int8 scales as vLLM's kernel computes them: absmax / 127."""
    if args.type == "int" and args.symmetric and args.strategy == "token":
        s = value.abs().amax(dim=-1, keepdim=True) / 127.0
        return torch.where(s > 0, s, torch.ones_like(s)), None
    return CT_DYNAMIC(value=value, args=args, module=module, global_scale=global_scale)


def bf16_inputs(model):
    """Round every quantized linear's input through BF16 (W4A16's 16-bit activations)."""
    def hook(_module, args):
        return (args[0].to(torch.bfloat16).to(args[0].dtype),) + tuple(args[1:])
    return [m.register_forward_pre_hook(hook) for m in model.modules()
            if getattr(m, "quantization_scheme", None) is not None
            and m.quantization_scheme.input_activations is None]


def forward(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(ids).logits[0].double(), dim=-1)


def w4a16_g32():
    # group 32 divides every width of the fixtures (64, 96, 128, 256); the W4A16 preset's 128
    # does not, and llm-compressor refuses such layers
    return {"group_0": QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group",
                                 group_size=32))}


CASES = {
    "llama3-bias-w8a8": ("llama3-bias", dict(scheme="W8A8")),
    "llama3-bias-fp8": ("llama3-bias", dict(scheme="FP8_DYNAMIC")),
    "llama3-bias-w4a16": ("llama3-bias", dict(config_groups=w4a16_g32())),
    "gemma2-softcap-w8a8": ("gemma2-softcap", dict(scheme="W8A8")),
    "qwen3-qknorm-w4a16": ("qwen3-qknorm", dict(config_groups=w4a16_g32())),
}


def make(name, src, args, hf_dir, out_dir):
    d = out_dir / name
    if d.exists():
        shutil.rmtree(d)
    model = AutoModelForCausalLM.from_pretrained(hf_dir / src, dtype=torch.float32)
    oneshot(model=model, recipe=QuantizationModifier(targets="Linear", ignore=["lm_head"],
                                                     **args))
    model.save_pretrained(d, save_compressed=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf_dir / src / f, d / f)
    record(d, hf_dir / src)


def record(d, float_dir):
    """transformers' forward of the compressed-tensors checkpoint `d` on the tokens of the
    float fixture `float_dir`, into d/reference.json."""
    ref_in = json.loads((float_dir / "reference.json").read_text())
    ids = torch.tensor([ref_in["tokens"]])
    model, info = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                       output_loading_info=True)
    model.eval()
    unread = {k: v for k, v in info.items() if v and k != "error_msgs"}
    if unread or info.get("error_msgs"):
        sys.exit(f"{d.name}: transformers did not read the checkpoint as written: {info}")
    ct_rule = forward(model, ids)
    ct_forward.compute_dynamic_scales_and_zp = vllm_dynamic
    hooks = bf16_inputs(model)
    try:
        lp = forward(model, ids)
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=GREEDY, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
    finally:
        ct_forward.compute_dynamic_scales_and_zp = CT_DYNAMIC
        for h in hooks:
            h.remove()
    print(f"{d.name}: {len(hooks)} linears on BF16 inputs; transformers' own forward (f32 "
          f"inputs, compressed-tensors' int8 scale rule) is up to "
          f"{(ct_rule - lp).abs().max().item():.2e} away in log p")
    n = ids.shape[1]
    ref = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "llmcompressor": llmcompressor.__version__,
        "compressed_tensors": compressed_tensors.__version__,
        "tokens": ref_in["tokens"],
        "next_logprobs": [lp[t, ids[0, t + 1]].item() for t in range(n - 1)],
        "last_logprobs": lp[-1].tolist(),
        "greedy": out[0, n:].tolist(),
    }
    (d / "reference.json").write_text(json.dumps(ref))
    size = sum(f.stat().st_size for f in d.iterdir())
    print(f"{d.name}: {size} bytes, greedy {ref['greedy']}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--record":
        # checkpoints ferroq wrote: DIR FLOAT_FIXTURE_DIR pairs
        args = sys.argv[2:]
        for d, float_dir in zip(args[::2], args[1::2]):
            record(Path(d), Path(float_dir))
        return
    hf_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/hf")
    out_dir = Path(sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/llmc")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (src, args) in CASES.items():
        make(name, src, args, hf_dir, out_dir)


if __name__ == "__main__":
    main()
