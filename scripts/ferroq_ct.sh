#!/usr/bin/env bash
# Checkpoints ferroq writes, run by transformers + compressed-tensors (by hand, not in CI):
#
#     bash scripts/ferroq_ct.sh [PYTHON]
#
# quantizes five of the transformers fixtures (Phi-3 twice: its projections fused again) with presets whose checkpoints other runtimes
# can run (no online rotation, the LM head left in float) into tests/fixtures/ferroq-ct/, then
# records transformers' forward of each (scripts/llmc_reference.py --record, which also checks
# that transformers reads every tensor by its HF name). tests/hf_reference.rs holds ferroq's
# reading of the same files to that forward.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-/tmp/refvenv/bin/python}
out=tests/fixtures/ferroq-ct
mkdir -p "$out"
# calibration text in the fixtures' word-level vocabulary (w3 .. w319), seeded
python3 -c "
import random
r = random.Random(7)
print('\n\n'.join(' '.join(f'w{r.randrange(3, 320)}' for _ in range(40)) for _ in range(64)))
" > "$out/calib.txt"
cargo build --release -q
args=()
for case in gemma2-softcap:w8a8-dynamic gemma3-local-global:w8a8-dynamic llama3-bias:fp8 \
    phi3-longrope:w8a8-dynamic phi3-longrope:w4a16 \
    olmo2-postnorm:w4a16; do
    fixture=${case%%:*} preset=${case##*:}
    dir=$out/$fixture-$preset
    rm -rf "$dir"
    ./target/release/ferroq quantize -m "tests/fixtures/hf/$fixture" --recipe "$preset" \
        --lm-head dense --calib "$out/calib.txt" --calib-samples 8 --calib-len 32 -o "$dir"
    args+=("$dir" "tests/fixtures/hf/$fixture")
done
"$py" scripts/llmc_reference.py --record "${args[@]}"
