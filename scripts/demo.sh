#!/usr/bin/env bash
# The main job on a fresh machine: fetch the default model, build ferroq, convert the model to
# its FP16 baseline, and generate (plain completion, a chat turn, and a 512-token-prompt run),
# printing prefill and decode tok/s. Quantization and the accuracy report join this script
# when `ferroq quantize` and `ferroq eval` land (issues 3 and 4).
set -euo pipefail
cd "$(dirname "$0")/.."
bash models/fetch.sh
BIN=./target/release/ferroq

echo "== greedy completion (FP16 baseline)"
$BIN generate -p "The capital of France is" -n 24

echo "== chat"
$BIN generate --chat -p "Give me three tips for writing clear code." -n 96

echo "== speed: 510-token prompt from wikitext-2, 128 decoded tokens"
WIKI=../shared/data/wikitext-2-raw/wiki.test.raw
if [ -f "$WIKI" ]; then
  head -c 1900 "$WIKI" > /tmp/ferroq-prompt.txt
  $BIN generate --prompt-file /tmp/ferroq-prompt.txt -n 128 --ignore-eos > /dev/null
else
  echo "($WIKI not found; skipping the long-prompt run)"
fi
