#!/usr/bin/env bash
# The main job on a fresh machine: fetch the default model, build ferroq, convert it to the
# FP16 baseline, quantize it (w8a8: iterative smoothing, per-channel int8 weights, pd_mix int8
# activations), generate from both, and print prefill / decode tok/s for each. The accuracy
# report (perplexity, KL, top-1 vs the baseline) joins when `ferroq eval` lands (issue 4).
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
  head -c 1900 "$WIKI" > /tmp/ferroq-prompt.txt
  for m in "$BASE" "$W8A8"; do
    echo "== speed, $m: 510-token wikitext-2 prompt, 128 decoded tokens"
    $BIN generate -m "$m" --prompt-file /tmp/ferroq-prompt.txt -n 128 --ignore-eos > /dev/null
  done
else
  echo "($WIKI not found; skipping the speed runs)"
fi
