#!/usr/bin/env bash
# GPU validation in two halves, for the device machine (no Rust toolchain, no network there):
#
#   bash scripts/gpu-check.sh build    here: build ferroq and the CUDA test binaries, strip them
#                                      into .gpu/ (git-ignored), with the commit they came from
#   then one device call:              run(command="bash scripts/gpu-check.sh remote",
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
case "${1:-}" in
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
  git rev-parse --short HEAD > .gpu/COMMIT
  du -sh .gpu
  echo 'now: run(command="bash scripts/gpu-check.sh remote", carry=[".gpu"], timeout_s=600)'
  ;;
remote)
  OUT=${OUT:-/tmp/gpu-out}
  mkdir -p "$OUT"
  cuda_env
  status=0
  {
    echo "# GPU check $(date -u +%FT%TZ), commit $(cat .gpu/COMMIT)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  } | tee "$OUT/summary.md"
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
  echo "usage: bash scripts/gpu-check.sh build|remote [TEST_BIN...]|bench|model QUANT...  (QUANT: bf16 w8a8 fp8 w4a16 eager hf)" >&2
  exit 2
  ;;
esac
