#!/usr/bin/env bash
# MPI ping-pong on the test bed: two ranks on different nodes and on one
# node, as the unprivileged user, with configurations alternating in one run
# so that drift of the shared machine hits each alike.
#
#   bash bench/pingpong.sh [ROUNDS [ITERATIONS]]
#
# Configurations (each round runs each once, in turn):
#   bare       the host's MPICH, no container            (measured now)
#   image      inside the image with its own MPICH       (after the launcher merge)
#   injected   inside the image, host MPICH injected     (after the launcher merge)
# Only `bare` runs until `shoal run` exists; the others are listed so the
# table has its final shape. Results: bench/results/pingpong-*.txt and a
# per-size median over rounds on stdout (for BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
ITERS=${2:-2000}
USER_NAME=${SHOAL_BENCH_USER:-alice}

bash tests/testbed/setup.sh >/dev/null
bash tests/testbed/up.sh >/dev/null

out=bench/results
mkdir -p "$out"
work=$(runuser -u "$USER_NAME" -- mktemp -d /tmp/shoal-pingpong.XXXXXX)
trap 'rm -rf "$work"' EXIT
runuser -u "$USER_NAME" -- mpicc -O2 -o "$work/pingpong" bench/pingpong.c

# placement -> srun options: ranks on two nodes, or both on one node.
declare -A PLACE=([internode]="-N2 -n2 --ntasks-per-node=1" [intranode]="-N1 -n2")
CONFIGS=(bare)

run_one() {  # run_one CONFIG PLACEMENT ROUND
    local cfg=$1 place=$2 round=$3 file="$out/pingpong-$1-$2-$3.txt"
    case $cfg in
        bare) runuser -u "$USER_NAME" -- env -i PATH=/usr/bin:/bin HOME="/home/$USER_NAME" \
                  srun ${PLACE[$place]} --mpi=pmi2 "$work/pingpong" "$ITERS" >"$file" ;;
        *) echo "configuration $cfg needs shoal run (not merged yet)" >&2; return 1 ;;
    esac
}

for round in $(seq 1 "$ROUNDS"); do
    for place in internode intranode; do
        for cfg in "${CONFIGS[@]}"; do
            run_one "$cfg" "$place" "$round"
        done
    done
done

# Median over rounds of each size's latency and bandwidth.
for place in internode intranode; do
    for cfg in "${CONFIGS[@]}"; do
        echo "== $cfg $place ($ROUNDS rounds x $ITERS iterations; median of rounds)"
        head -n1 "$out/pingpong-$cfg-$place-1.txt"
        cat "$out"/pingpong-"$cfg"-"$place"-*.txt | awk '
            /^#/ { next }
            { lat[$1] = lat[$1] " " $2; bw[$1] = bw[$1] " " $3; if (!($1 in seen)) { order[n++] = $1; seen[$1] = 1 } }
            function median(list,   a, k, i, j, t) {
                k = split(list, a, " ")
                for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
                return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
            }
            END {
                printf "%10s %10s %10s\n", "bytes", "lat_us", "bw_MBps"
                for (i = 0; i < n; i++) printf "%10s %10.2f %10.1f\n", order[i], median(lat[order[i]]), median(bw[order[i]])
            }'
    done
done
