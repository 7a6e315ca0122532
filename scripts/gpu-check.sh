#!/usr/bin/env bash
# GPU validation in two halves, for the device machine (no Rust toolchain, no network there):
#
#   bash scripts/gpu-check.sh build    here: build ferroq and the CUDA test binaries, strip them
#                                      into .gpu/ (git-ignored), with the commit they came from
#   first device call (≤ 4 minutes):   run(command="bash scripts/gpu-check.sh first",
#                                          carry=[".gpu"], timeout_s=300)
#   bash scripts/gpu-check.sh first    there: the checks that catch the most per second, each
#                                      under its own timeout, sharing one kernel cache: every
#                                      kernel compiled by the device's NVRTC, the op table,
#                                      W8A8 / FP8 / BF16 GEMM and GEMV, both attention paths,
#                                      sampling and argmax, graph-replayed decode; then a tiny
#                                      model through the CLI with --device cuda: generate,
#                                      bench, and eval's KL against the same model's CPU logits;
#                                      a table of step, result and seconds in $OUT/first.md
#   then, as the budget allows:        run(command="bash scripts/gpu-check.sh remote",
#                                          carry=[".gpu"], timeout_s=600)
#   bash scripts/gpu-check.sh remote   there: `ferroq info`, every kernel compiled to CUBIN by the
#                                      device's NVRTC for its own arch and the CI arches, then the
#                                      GPU-vs-CPU kernel, quantized-linear, conv and whole-model
#                                      tests (`--ignored`); logs and a markdown summary (date,
#                                      device, commit, results) go to $OUT. `remote BIN...` runs
#                                      only those test binaries (cuda_compile, op_table, cuda_kernels,
#                                      cuda_quant, cuda_project, cuda_conv, cuda_model): the
#                                      whole-model tests fit better in a call of their own
#   then:                              run(command="bash scripts/gpu-check.sh bench", carry=[".gpu"])
#   bash scripts/gpu-check.sh bench    there: the fused conv against the unfused sequence
#                                      (examples/conv_cuda_bench.rs) and PyTorch's cuDNN on the
#                                      same shapes (scripts/gpu/conv_torch.py); ferroq's linears
#                                      (examples/cuda_gemm_bench.rs) and PyTorch's GEMMs
#                                      (scripts/gpu/gemm_torch.py), then both side by side with
#                                      % of peak and ratios (scripts/gpu/gemm_compare.py); to $OUT
#   then, one or two calls:            run(command="bash scripts/gpu-check.sh model bf16 w8a8 hf", ...)
#   bash scripts/gpu-check.sh model Q.. there: Llama-3.1-8B-shaped random-weight pp2048 / tg128
#                                      with the copy-bandwidth ceiling (examples/
#                                      cuda_decode_bench.rs) for each Q in bf16 w8a8 fp8 w4a16,
#                                      and `hf` for transformers' LlamaForCausalLM (scripts/gpu/
#                                      hf_decode.py); each model takes a few minutes to build
#
# Record each run's summary in docs/GPU_RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

# The device's CUDA libraries: the toolkit's, and PyTorch's wheels (libcublas.so.13 for the
# cuBLAS BF16 path; without it ferroq runs its own tensor-core GEMM).
cuda_env() {
  local d
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    $(python3 -c 'import site; print(" ".join(p + "/nvidia/cu13/lib" for p in site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null || true); do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
  done
  export FERROQ_KERNEL_CACHE=/tmp/ferroq-kernels
}
# A tiny random Llama as an HF directory for the CLI checks: the fuzz seed's config and
# weights (fuzz/seeds/hf_dir/plain: u32 length, config.json, safetensors), a character-level
# tokenizer, and a text to evaluate on.
tiny_model() {
  mkdir -p "$1"
  python3 - "$1" <<'PY'
import json, struct, sys
out = sys.argv[1]
raw = open("fuzz/seeds/hf_dir/plain", "rb").read()
n = struct.unpack("<I", raw[:4])[0]
open(f"{out}/config.json", "wb").write(raw[4:4 + n])
open(f"{out}/model.safetensors", "wb").write(raw[4 + n:])
vocab = {c: i for i, c in enumerate("abcdefghijklmno ")}
vocab["<unk>"] = 16
json.dump({"version": "1.0", "added_tokens": [], "normalizer": None,
           "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": False},
           "post_processor": None, "decoder": None,
           "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}},
          open(f"{out}/tokenizer.json", "w"))
words = ("abcdefghijklmno"[i % 15:][: 1 + i % 7] for i in range(4000))
open(f"{out}/text.txt", "w").write(" ".join(words))
PY
}

# $OUT made, the CUDA environment set, and a run's heading (TITLE: $1, date, commit, GPU)
# written to $OUT/$2.
begin() {
  OUT=${OUT:-/tmp/gpu-out}
  mkdir -p "$OUT"
  cuda_env
  {
    echo "# $1 $(date -u +%FT%TZ), commit $(cat .gpu/COMMIT)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  } | tee "$OUT/$2"
}

# One timed step of `first`: NAME SECONDS COMMAND...; its log in $OUT/NAME.log, its row in
# the table.
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS rc=0 res=pass
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  if [ $rc -eq 124 ]; then
    res="TIMEOUT (${limit}s)"
  elif [ $rc -ne 0 ]; then
    res="FAIL (exit $rc)"
  fi
  [ $rc -eq 0 ] || first_status=1
  printf '| %s | %s | %d | %s |\n' "$name" "$res" $((SECONDS - t0)) \
    "$(grep -h '^test result' "$OUT/$name.log" | tail -1 | cut -c1-60)" | tee -a "$OUT/first.md"
}

case "${1:-}" in
first)
  begin "GPU first light" first.md
  first_status=0
  printf '\n| step | result | s | tests |\n|---|---|---|---|\n' | tee -a "$OUT/first.md"
  # the timeouts add up to 4.5 minutes
  step info 10 .gpu/ferroq info
  step compile 50 .gpu/cuda_compile --test-threads 1 every_kernel the_disk_cache
  step op_table 25 .gpu/op_table --ignored --test-threads 1
  step kernels 45 .gpu/cuda_kernels --ignored --test-threads 1 gemm_and_gemv dense_linear \
    paged_attention argmax sampling_on_the_device
  step quant 35 .gpu/cuda_quant --ignored --test-threads 1 w8a8_gemm_and_gemv fp8_gemm_and_quant
  step graphs 30 .gpu/cuda_model --ignored --test-threads 1 graph_replayed
  step archs 30 .gpu/cuda_model --ignored --test-threads 1 every_architecture
  T=.gpu/tiny
  step generate 10 .gpu/ferroq generate -m $T --device cuda -p "abc def" -n 16
  step bench 15 .gpu/ferroq bench -m $T --device cuda -p 64 -n 32 -r 2
  step eval-cpu 10 .gpu/ferroq eval -m $T --baseline $T --device cpu --data $T/text.txt --ctx 64 --chunks 8 \
    --save-baseline "$OUT/tiny-cpu.bin"
  step eval-cuda 10 .gpu/ferroq eval -m $T --device cuda --data $T/text.txt --ctx 64 --chunks 8 \
    --load-baseline "$OUT/tiny-cpu.bin"
  exit $first_status
  ;;
build)

  cargo build --release -q
  rm -rf .gpu && mkdir -p .gpu
  cp target/release/ferroq .gpu/
  for e in conv_cuda_bench cuda_gemm_bench cuda_decode_bench; do
    cargo build --release -q --example "$e"
    cp "target/release/examples/$e" .gpu/
  done
  for t in op_table cuda_kernels cuda_quant cuda_project cuda_conv cuda_model cuda_compile; do
    bin=$(cargo test --release --no-run --test "$t" --message-format=json 2>/dev/null |
      python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$t" | tail -1)
    cp "$bin" ".gpu/$t"
  done
  strip .gpu/*
  tiny_model .gpu/tiny
  git rev-parse --short HEAD > .gpu/COMMIT
  du -sh .gpu
  echo 'now: run(command="bash scripts/gpu-check.sh first", carry=[".gpu"], timeout_s=300)'
  ;;
remote)
  begin "GPU check" summary.md
  status=0
  .gpu/ferroq info 2>&1 | tee "$OUT/info.log"
  shift
  # every GPU test binary by default; naming some splits a long check over two calls (each
  # call has 10 minutes)
  tests=("${@:-cuda_compile op_table cuda_kernels cuda_quant cuda_project cuda_conv cuda_model}")
  logs=()
  for t in ${tests[*]}; do
    log="$OUT/${t#cuda_}.log"
    logs+=("$log")
    if [ "$t" = cuda_compile ]; then
      .gpu/cuda_compile --test-threads 1 --nocapture every_kernel the_disk_cache a_compile_error
    else
      .gpu/"$t" --ignored --test-threads 1 --nocapture
    fi 2>&1 | tee "$log" || status=1
  done
  {
    echo
    echo '## results'
    grep -hE '^test |test result' "${logs[@]}" || true
  } | tee -a "$OUT/summary.md"
  exit $status
  ;;
bench)
  OUT=${OUT:-/tmp/gpu-out}
  mkdir -p "$OUT"
  cuda_env
  {
    echo "# GPU benchmarks $(date -u +%FT%TZ), commit $(cat .gpu/COMMIT)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
    echo
    echo '## fused conv + bn + relu (ferroq)'
    .gpu/conv_cuda_bench 20
    echo
    echo "## PyTorch cuDNN, same shapes"
    PYTHONUNBUFFERED=1 python3 scripts/gpu/conv_torch.py 20
    echo
    echo '## linears (ferroq, activation quantization included)'
    .gpu/cuda_gemm_bench 20
    echo
    echo '## PyTorch GEMMs, same shapes'
    PYTHONUNBUFFERED=1 python3 scripts/gpu/gemm_torch.py 20
  } 2>&1 | tee "$OUT/bench.md"
  # the two GEMM tables side by side: % of peak, ratio to the PyTorch peer
  python3 scripts/gpu/gemm_compare.py "$OUT/bench.md" | tee -a "$OUT/bench.md"
  ;;
model)
  OUT=${OUT:-/tmp/gpu-out}
  mkdir -p "$OUT"
  cuda_env
  shift
  for q in "${@:-bf16}"; do
    {
      echo "# Llama-3.1-8B-shaped $q $(date -u +%FT%TZ), commit $(cat .gpu/COMMIT)"
      if [ "$q" = hf ]; then
        PYTHONUNBUFFERED=1 python3 scripts/gpu/hf_decode.py 32
      elif [ "$q" = eager ]; then
        # BF16 decode without CUDA graphs: what the graphs save
        .gpu/cuda_decode_bench --quant bf16 --layers 32 -p 128 -n 128 -r 2 --no-graphs
      else
        .gpu/cuda_decode_bench --quant "$q" --layers 32 -p 2048 -n 128 -r 2
      fi
    } 2>&1 | tee "$OUT/model-$q.md"
  done
  ;;
*)
  echo "usage: bash scripts/gpu-check.sh build|first|remote [TEST_BIN...]|bench|model QUANT...  (QUANT: bf16 w8a8 fp8 w4a16 eager hf)" >&2
  exit 2
  ;;
esac
