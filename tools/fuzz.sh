#!/usr/bin/env bash
# Run every libFuzzer target of fuzz/ for SECONDS each (default 60), one after
# the other, on one core: tools/fuzz.sh [SECONDS] [TARGET...]
#
# libFuzzer on the stable toolchain: sanitizer-coverage through RUSTFLAGS,
# and an explicit --target so build scripts are not instrumented. The corpus
# of each target grows in fuzz/corpus/TARGET (fuzz/dict/TARGET.dict, where
# present, gives libFuzzer the grammar's keywords) and is minimised after
# its run; a crash leaves its input in fuzz/artifacts/TARGET and stops the
# script. Reproduce one with: tools/fuzz.sh repro TARGET FILE.
# Figures of the last run of each target go to fuzz/logs/TARGET.log.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
TRIPLE=x86_64-unknown-linux-gnu
# Never the main build's target directory: other RUSTFLAGS.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/walkeeper-fuzz-target}"
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
ALL=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^walkeeper-fuzz$')

build() {
    cargo build --release --target "$TRIPLE" --bins
}
bin() {
    echo "$CARGO_TARGET_DIR/$TRIPLE/release/$1"
}

if [[ "${1:-}" == repro ]]; then
    build
    exec "$(bin "$2")" "$3"
fi

SECONDS_EACH="${1:-60}"
shift || true
TARGETS="${*:-$ALL}"
build
mkdir -p logs
for t in $TARGETS; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "== $t: ${SECONDS_EACH}s"
    # One process (no -jobs: its output would go to fuzz-N.log and a crash
    # would not fail the script); -max_len: room for a structure-aware input.
    dict=()
    [[ -f "dict/$t.dict" ]] && dict=(-dict="dict/$t.dict")
    "$(bin "$t")" -max_total_time="$SECONDS_EACH" "${dict[@]}" \
        -max_len=8192 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" "corpus/$t" >"logs/$t.log" 2>&1 || {
        tail -40 "logs/$t.log"
        echo "== $t: crashed; reproducer in fuzz/artifacts/$t/" >&2
        exit 1
    }
    grep -E '^#[0-9]+.*(DONE|pulse)' "logs/$t.log" | tail -1
    grep -E 'stat::number_of_executed_units' "logs/$t.log" || true
    # Keep the corpus small: only inputs that add an edge (-use_counters=0:
    # hit counts do not count), a tenth of the inputs or fewer.
    rm -rf "corpus/$t.min" && mkdir "corpus/$t.min"
    "$(bin "$t")" -merge=1 -use_counters=0 -max_len=8192 "corpus/$t.min" "corpus/$t" >/dev/null 2>&1
    rm -rf "corpus/$t" && mv "corpus/$t.min" "corpus/$t"
done
