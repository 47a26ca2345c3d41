#!/usr/bin/env bash
# Step launch overhead on the three-node test cluster, measured side by side
# in one run, alternating so drift hits every variant alike:
#   bare:   srun -N3 -n6 /bin/true
#   shoal:  srun -N3 -n6 --image=IMG /bin/true        (warm: image staged)
#   ch-run: srun -N3 -n6 ch-run IMG.sqfs -- /bin/true  (Charliecloud 0.31)
# plus the cold case (first staging: node caches emptied before each run).
# Run as root after `bash tests/testbed/up.sh --install target/release`;
# the jobs run as the test user. Prints a Markdown table for BENCHMARKS.md.
set -euo pipefail
ROUNDS=${ROUNDS:-20}
COLD_ROUNDS=${COLD_ROUNDS:-5}
USER_NAME=${USER_NAME:-alice}
IMAGE=${IMAGE:-127.0.0.1:5443/shoal/busybox:latest}
SQFS=${SQFS:?set SQFS to the squashfs of the same image for ch-run}
CACHE_DIR=${CACHE_DIR:-/var/cache/shoal}

as_user() { runuser -u "$USER_NAME" -- env -i HOME="/home/$USER_NAME" USER="$USER_NAME" PATH=/usr/local/bin:/usr/bin:/bin bash -c "cd ~ && $1"; }
# Wall time of one command in milliseconds.
ms() { local t0 t1; t0=$(date +%s%N); as_user "$1" >/dev/null; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -A runs=([bare]="srun -N3 -n6 /bin/true"
                 [shoal]="srun -N3 -n6 --image=$IMAGE /bin/true"
                 [chrun]="srun -N3 -n6 ch-run $SQFS -- /bin/true")
for v in bare shoal chrun; do as_user "${runs[$v]}" >/dev/null; done   # warm-up, stages the image
declare -A times=()
for ((i = 0; i < ROUNDS; i++)); do
    for v in bare shoal chrun; do times[$v]+="$(ms "${runs[$v]}") "; done
done
cold=""
for ((i = 0; i < COLD_ROUNDS; i++)); do
    rm -rf "${CACHE_DIR:?}"/n[123]/images/*
    cold+="$(ms "${runs[shoal]}") "
done
bare=$(tr ' ' '\n' <<<"${times[bare]}" | grep . | median)
echo "| variant | median ms | vs bare |"
echo "|---|---|---|"
for v in bare shoal chrun; do
    m=$(tr ' ' '\n' <<<"${times[$v]}" | grep . | median)
    echo "| ${runs[$v]} (warm, $ROUNDS runs) | $m | $(awk -v a="$m" -v b="$bare" 'BEGIN{printf "%.2fx", a/b}') |"
done
m=$(tr ' ' '\n' <<<"$cold" | grep . | median)
echo "| ${runs[shoal]} (cold: node caches emptied, $COLD_ROUNDS runs) | $m | $(awk -v a="$m" -v b="$bare" 'BEGIN{printf "%.2fx", a/b}') |"
