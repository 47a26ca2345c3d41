#!/usr/bin/env bash
# Builds Shoal's fuzz targets (libFuzzer, sanitizer coverage, stable
# toolchain) and runs each on its committed corpus for a bounded time.
#
#   fuzz/run.sh [SECONDS_PER_TARGET [TARGET...]]     default: 20 s, every target
#
# New inputs that raise coverage go to a scratch copy of the corpus (the
# committed corpus stays small; see SECURITY.md to add to it); a crash is
# saved under fuzz/artifacts/TARGET/ and fails the run. Prints, per target,
# the executions and the coverage libFuzzer reached. Runs niced: CI shares
# its cores with the tests.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-20}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(reference options config manifest layers squashfs abi_squashfs elf slurm_env)
fi
triple=$(rustc -vV | sed -n 's/^host: //p')
# What cargo-fuzz passes, minus the -Z flags (stable rustc): inline 8-bit
# counters, PC table and comparison tracing for libFuzzer.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# --target: the flags apply to the targets only, not to build scripts.
nice -n 10 cargo build --release --locked --target "$triple" --bins
bin=target/$triple/release
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    work=$(mktemp -d)
    cp -r "corpus/$t/." "$work/"
    log=$(mktemp)
    set +e
    nice -n 19 "$bin/$t" "$work" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -max_len=1048576 -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    echo "fuzz $t: ${secs}s, ${execs:-0} executions, coverage ${cov:-0} edges, ${ft:-0} features, corpus $(ls "$work" | wc -l) inputs, exit $rc"
    if [ $rc -ne 0 ]; then
        tail -40 "$log"
        status=1
    fi
    rm -rf "$work" "$log"
done
exit $status
