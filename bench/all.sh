#!/usr/bin/env bash
# Every side-by-side benchmark in one go, for a quiet machine, then one
# summary table (bench/summary.sh) over all of them:
#   1. the release build (shoal and the plugin) and the rivals' check
#      (bench/rivals.sh check: each rival runs /bin/true as the test user)
#   2. bench/launch.sh LAUNCHES     (all tools, busybox, debian-mpich, pystack)
#   3. bench/pull.sh PULL_ROUNDS    (all pullers, debian-mpich)
#   4. with SRUN=1 (default): tests/testbed/up.sh --install target/release,
#      then bench/srun.sh on busybox and debian-mpich, each under the
#      cluster lock (the installed plugin is this tree's release build)
#
#   bash bench/all.sh [LAUNCHES [PULL_ROUNDS]]      (root; defaults 60 and 3)
#
# A figure fit for BENCHMARKS.md needs a quiet machine: this prints the
# load average before it starts and the table carries it per figure.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-60}
PULL_ROUNDS=${2:-3}
LOCK=/tmp/shoal-cluster.lock
mark=$(mktemp)
trap 'rm -f "$mark"' EXIT
echo "bench/all.sh: $(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes')" >&2
cargo build --release --workspace --locked
bash bench/rivals.sh check
bash bench/launch.sh "$N"
bash bench/pull.sh "$PULL_ROUNDS"
if [ "${SRUN:-1}" = 1 ]; then
    flock -o "$LOCK" bash tests/testbed/up.sh --install target/release
    flock -o "$LOCK" env ROUNDS="${SRUN_ROUNDS:-30}" COLD_ROUNDS="${SRUN_COLD_ROUNDS:-5}" IMAGE=shoal/busybox:latest bash bench/srun.sh
    flock -o "$LOCK" env ROUNDS="${SRUN_ROUNDS:-30}" COLD_ROUNDS="${SRUN_COLD_ROUNDS:-5}" IMAGE=shoal/debian-mpich:12 bash bench/srun.sh
fi
echo
echo "# bench/all.sh: every figure of this run"
bash bench/summary.sh $(find bench/results -name '*.tsv' -newer "$mark" | sort)
