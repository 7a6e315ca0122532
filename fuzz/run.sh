#!/usr/bin/env bash
# Fuzz one target with AFL++ (cargo-afl, stable toolchain) for a number of executions:
#   bash fuzz/run.sh TARGET [EXECS]     TARGET: gguf | hf_dir | recipe | request
# Set-up once: `cargo install cargo-afl` (it builds AFL++). Findings land in
# fuzz/out/TARGET/default/{crashes,hangs}; copy each crash to fuzz/regressions/TARGET/ so
# `cargo test --test fuzz_regressions` keeps it fixed. Prints the executions and crashes seen.
set -euo pipefail
cd "$(dirname "$0")"
T=${1:?target: gguf | hf_dir | recipe | request}
EXECS=${2:-1000000}
command -v cargo-afl >/dev/null || cargo install cargo-afl
[ -d seeds/"$T" ] || cargo run --release --bin make_seeds
cargo afl build --release --bin "fuzz_$T"
# a fresh campaign each run; -E stops after EXECS executions, -m bounds memory (MiB) so a
# runaway allocation is a crash, -t bounds one execution (ms) so a runaway loop is a hang
rm -rf "out/$T"
mkdir -p out
AFL_SKIP_CPUFREQ=1 AFL_NO_UI=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
  cargo afl fuzz -i "seeds/$T" -o "out/$T" -E "$EXECS" -m 4096 -t 2000 "target/release/fuzz_$T" \
  > "out-$T.log" 2>&1 || { tail -20 "out-$T.log"; exit 1; }
S=out/$T/default/fuzzer_stats
grep -E "^(execs_done|execs_per_sec|run_time|corpus_count|edges_found|total_edges|saved_crashes|saved_hangs) " "$S"
