#!/usr/bin/env bash
# The test suite: fetch the real model the end-to-end tests use (cached under models/cache),
# install into models/cache/venv the official OpenAI Python client (the server test drives
# `ferroq serve` with it) and NVRTC 13.0 from PyPI (the CI proof that every CUDA kernel
# compiles to CUBIN, without a GPU), then run every test in release mode (the real-model
# forward passes are too slow unoptimised). GPU-only tests stay #[ignore]d here; they run on
# the device machine through scripts/gpu-check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash models/fetch.sh --no-convert
OPENAI=openai==3.54.0
NVRTC="cuda-toolkit[nvrtc]==13.0.2"
VENV=models/cache/venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if ! "$VENV/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '${OPENAI#*==}')" 2>/dev/null; then
  echo "test deps: installing $OPENAI into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$OPENAI"
fi
NVRTC_LIB=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13/lib
if [ ! -e "$NVRTC_LIB/libnvrtc.so.13" ]; then
  echo "test deps: installing $NVRTC into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$NVRTC"
fi
export FERROQ_PYTHON="$PWD/$VENV/bin/python"
export LD_LIBRARY_PATH="$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# compile tests write CUBINs here instead of ~/.cache
export FERROQ_KERNEL_CACHE="$PWD/target/kernel-cache"
cargo test --release --all-targets "$@"
# the fuzz regressions again with overflow checks on (the dev profile), as the fuzzer built them:
# a wrapped size is a failure here, not a silently wrong number
cargo test --test fuzz_regressions
