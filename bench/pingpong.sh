#!/usr/bin/env bash
# MPI ping-pong on the test bed: two ranks on different nodes and on one
# node, as the unprivileged user, with configurations alternating in one run
# so that drift of the shared machine hits each alike.
#
#   bash bench/pingpong.sh [--image=REF [--module=LIST]] [ROUNDS [ITERATIONS]]
#
# Configurations (each round runs each once, in turn):
#   bare       the host's MPICH, no container
#   image      srun --image=REF --module=none: the image's own MPICH
#   injected   srun --image=REF --module=LIST (default mpich): the host's
#              MPICH bound over the image's
# `image` and `injected` run only with --image (they need the SPANK plugin
# installed in the test bed's Slurm, which only the lead does:
# `tests/testbed/up.sh --install`), e.g.
#   bash bench/pingpong.sh --image=127.0.0.1:5443/shoal/debian-mpich:12
# The benchmark program is built on the host and lives under the user's home
# (bound into the container; /tmp inside is a fresh tmpfs). Results:
# bench/results/pingpong-*.txt and a per-size median over rounds on stdout
# (for BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE= MODULE=mpich
ARGS=()
for a in "$@"; do
    case $a in
        --image=*) IMAGE=${a#--image=} ;;
        --module=*) MODULE=${a#--module=} ;;
        -*) echo "pingpong.sh: unknown option $a (--image=REF, --module=LIST)" >&2; exit 2 ;;
        *) ARGS+=("$a") ;;
    esac
done
ROUNDS=${ARGS[0]:-5}
ITERS=${ARGS[1]:-2000}
USER_NAME=${SHOAL_BENCH_USER:-alice}

bash tests/testbed/setup.sh >/dev/null
bash tests/testbed/up.sh >/dev/null

out=bench/results
mkdir -p "$out"
work=$(runuser -u "$USER_NAME" -- bash -c 'mkdir -p ~/.cache && mktemp -d ~/.cache/shoal-pingpong.XXXXXX')
trap 'rm -rf "$work"' EXIT
runuser -u "$USER_NAME" -- mpicc -O2 -o "$work/pingpong" bench/pingpong.c

# placement -> srun options: ranks on two nodes, or both on one node.
declare -A PLACE=([internode]="-N2 -n2 --ntasks-per-node=1" [intranode]="-N1 -n2")
CONFIGS=(bare)
if [ -n "$IMAGE" ]; then
    CONFIGS+=(image injected)
    # srun --image takes images from a store (it pins them at submission).
    runuser -u "$USER_NAME" -- env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="/home/$USER_NAME" \
        SSL_CERT_FILE=/var/lib/shoal-testbed/tls/cert.pem shoal pull "$IMAGE" >&2
fi

run_one() {  # run_one CONFIG PLACEMENT ROUND
    local cfg=$1 place=$2 round=$3 file="$out/pingpong-$1-$2-$3.txt"
    local shoal=()
    case $cfg in
        bare) ;;
        image) shoal=(--image="$IMAGE" --module=none) ;;
        injected) shoal=(--image="$IMAGE" --module="$MODULE") ;;
    esac
    # From the work directory: the task's cwd must exist inside the image.
    runuser -u "$USER_NAME" -- env -i PATH=/usr/bin:/bin HOME="/home/$USER_NAME" bash -c 'cd "$1" && shift && exec "$@"' _ "$work" \
        srun ${PLACE[$place]} --mpi=pmi2 "${shoal[@]}" "$work/pingpong" "$ITERS" >"$file"
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
