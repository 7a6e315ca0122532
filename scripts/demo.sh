#!/usr/bin/env bash
# The main job on a fresh machine: fetch the default model, build ferroq, convert it to the
# FP16 baseline, quantize it (w8a8: iterative smoothing, Hadamard rotation, per-channel int8
# weights, pd_mix int8 activations), generate from both, then measure: accuracy of the W8A8
# model against the baseline on wikitext-2 (perplexity, KL divergence, top-1 agreement;
# EVAL_CHUNKS chunks of 512 tokens, default 8, llama-perplexity uses 40; HTML report in
# target/eval-report.html) and prefill / decode tok/s of both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash models/fetch.sh
BIN=./target/release/ferroq
BASE=models/SmolLM2-135M-Instruct-f16
W8A8=models/SmolLM2-135M-Instruct-w8a8

echo "== quantize the FP16 baseline with the w8a8 preset"
rm -rf "$W8A8"
$BIN quantize -m "$BASE" --recipe w8a8 -o "$W8A8"

for m in "$BASE" "$W8A8"; do
  echo "== $m: greedy completion"
  $BIN generate -m "$m" -p "The capital of France is" -n 24
  echo "== $m: chat"
  $BIN generate -m "$m" --chat -p "Give me three tips for writing clear code." -n 96
done

WIKI=../shared/data/wikitext-2-raw/wiki.test.raw
if [ -f "$WIKI" ]; then
  echo "== accuracy: $W8A8 vs $BASE on wikitext-2 (${EVAL_CHUNKS:-8} chunks x 512 tokens)"
  $BIN eval -m "$W8A8" --baseline "$BASE" --data "$WIKI" --chunks "${EVAL_CHUNKS:-8}" \
    --report target/eval-report.html
else
  echo "($WIKI not found; skipping the accuracy report)"
fi

echo "== speed: pp512 and tg128, 3 repetitions each"
$BIN bench -m "$BASE" -m "$W8A8" -p 512 -n 128 -r 3
