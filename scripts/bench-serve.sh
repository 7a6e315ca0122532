#!/usr/bin/env bash
# Serving load test on this machine: start `ferroq serve` on a free loopback port, run
# `ferroq loadgen` at several concurrencies (streamed completions, greedy, EOS ignored so every
# request generates MAX_TOKENS), print the table, stop the server with SIGTERM.
#
#   bash scripts/bench-serve.sh [MODEL]        default: the fetched FP16 SmolLM2
#   env: CONCURRENCY=1,8,32 REQUESTS=(2 x clients) MAX_TOKENS=64 PROMPT_WORDS=32
#        MAX_BATCH=32 THREADS=(all cores) EXTRA="more serve flags"
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/SmolLM2-135M-Instruct-f16}
CONCURRENCY=${CONCURRENCY:-1,8,32}
MAX_TOKENS=${MAX_TOKENS:-64}
PROMPT_WORDS=${PROMPT_WORDS:-32}
MAX_BATCH=${MAX_BATCH:-32}
cargo build --release -q
BIN=target/release/ferroq
THREADS_FLAG=()
[ -n "${THREADS:-}" ] && THREADS_FLAG=(--threads "$THREADS")
LOG=$(mktemp)
"$BIN" "${THREADS_FLAG[@]}" serve -m "$MODEL" --port 0 --max-batch "$MAX_BATCH" \
  --max-seq-len 1024 --kv-cache-tokens 16384 ${EXTRA:-} 2>"$LOG" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 600); do
  ADDR=$(grep -o 'listening on http://[0-9.:]*' "$LOG" | sed 's#.*http://##' || true)
  [ -n "$ADDR" ] && break
  kill -0 $PID 2>/dev/null || { cat "$LOG" >&2; exit 1; }
  sleep 0.1
done
[ -n "$ADDR" ] || { echo "server did not start" >&2; cat "$LOG" >&2; exit 1; }
grep '^ferroq serve: model\|^loaded' "$LOG" >&2
REQ=()
[ -n "${REQUESTS:-}" ] && REQ=(--requests "$REQUESTS")
echo "# $(date -u +%F) $(git rev-parse --short HEAD) $(nproc) cores, model $MODEL, max tokens $MAX_TOKENS, prompt ~$PROMPT_WORDS words"
"$BIN" loadgen --addr "$ADDR" --concurrency "$CONCURRENCY" --max-tokens "$MAX_TOKENS" \
  --prompt-words "$PROMPT_WORDS" "${REQ[@]}"
