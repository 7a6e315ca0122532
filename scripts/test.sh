#!/usr/bin/env bash
# The test suite: fetch the real model the end-to-end tests use (cached under models/cache),
# then run every test in release mode (the real-model forward passes are too slow unoptimised).
set -euo pipefail
cd "$(dirname "$0")/.."
bash models/fetch.sh --no-convert
cargo test --release --all-targets "$@"
