#!/usr/bin/env bash
# The test suite: fetch the real model the end-to-end tests use (cached under models/cache),
# install the official OpenAI Python client into models/cache/venv (the server test drives
# `ferroq serve` with it), then run every test in release mode (the real-model forward passes
# are too slow unoptimised).
set -euo pipefail
cd "$(dirname "$0")/.."
bash models/fetch.sh --no-convert
OPENAI=openai==3.54.0
VENV=models/cache/venv
if ! "$VENV/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '${OPENAI#*==}')" 2>/dev/null; then
  echo "openai client: installing $OPENAI into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$OPENAI"
fi
export FERROQ_PYTHON="$PWD/$VENV/bin/python"
cargo test --release --all-targets "$@"
