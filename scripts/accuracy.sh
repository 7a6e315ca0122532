#!/usr/bin/env bash
# The accuracy table of docs/ACCURACY.md: every preset (or the recipes given as arguments)
# quantized from the FP16 baseline and evaluated on wikitext-2 against it with llama-perplexity's
# protocol (CHUNKS chunks of 512 tokens, default 40, second half of each scored, no BOS). The
# baseline's log-probabilities are computed once and reused. EVAL_PATH=decode scores the
# decode path instead (`ferroq eval --path decode`). Results go to stdout and, as JSON lines, to
# $OUT (default target/accuracy.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=./target/release/ferroq
BASE=models/SmolLM2-135M-Instruct-f16
WIKI=../shared/data/wikitext-2-raw/wiki.test.raw
CHUNKS=${CHUNKS:-40}
OUT=${OUT:-target/accuracy.jsonl}
EVAL_PATH=${EVAL_PATH:-prefill}
[ -x "$BIN" ] || cargo build --release
[ -d "$BASE" ] || bash models/fetch.sh
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
RECIPES=("$@")
[ ${#RECIPES[@]} -gt 0 ] || RECIPES=(w8a8 w8a8-dynamic w8a8-static fp8 w4a16)
$BIN eval -m "$BASE" --baseline "$BASE" --data "$WIKI" --chunks "$CHUNKS" \
  --save-baseline "$WORK/base.bin" >/dev/null
: > "$OUT"
for r in "${RECIPES[@]}"; do
  name=$(basename "$r" .yaml)
  $BIN quantize -m "$BASE" --recipe "$r" -o "$WORK/$name" 2>&1 | grep -v '^\s*$' | tail -n 3
  $BIN eval -m "$WORK/$name" --data "$WIKI" --chunks "$CHUNKS" --load-baseline "$WORK/base.bin" \
    --path "$EVAL_PATH" --json > "$WORK/$name.json"
  python3 - "$name" "$WORK/$name.json" "$OUT" "$EVAL_PATH" <<'PY'
import json, sys
name, path, out, eval_path = sys.argv[1:]
d = json.load(open(path)); d["recipe"] = name; d["path"] = eval_path
print(f"{name}: PPL {d['ppl_base']:.4f} -> {d['ppl']:.4f} ({d['ppl_change_pct']:+.2f}%), "
      f"KL mean {d['kl_mean']:.4f} median {d['kl_median']:.4f} p99 {d['kl_p99']:.4f}, "
      f"top-1 {d['top1_agreement_pct']:.1f}% ({d['chunks']} chunks, {d['path']} path)")
open(out, "a").write(json.dumps(d) + "\n")
PY
done
