#!/usr/bin/env bash
# Step launch overhead on the three-node test cluster, measured side by side
# in one run, the order changing each round (bench.sh's round_order) so
# drift and leftover work hit every variant alike:
#   bare:    srun -N3 -n6 /bin/true
#   shoal:   srun -N3 -n6 --image=IMG /bin/true        (warm: image staged)
#   ch-0.31: srun -N3 -n6 ch-run IMG.sqfs -- /bin/true  (the host's Charliecloud 0.31)
# then the cold case (first staging: node caches emptied before each
# --image run), alternating with bare runs, by copy (the default) and in
# place (`node.staging = "in-place"`: served from the site store, checked
# against its hash tree as it is read).
#
#   ROUNDS=20 COLD_ROUNDS=5 IMAGE=shoal/busybox:latest bash bench/srun.sh
#
# Run as root, under the cluster lock, after `bash tests/testbed/up.sh
# --install target/release`; the jobs run as the test user. IMAGE is a
# repository of the test registry (default shoal/busybox:latest; also
# shoal/debian-mpich:12); ch-run runs the squashfs of the same image
# (bench/lib/bench.sh's image_sqfs, or SQFS=...). Sid's rivals are not
# here: a task of the host's Slurm runs in the host's root, where they are
# not installed. Output: bench/results/srun-*.tsv and bench/summary.sh's
# table (the ratio in each cell is variant / --image).
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/testbed/common.sh
source bench/lib/bench.sh
ROUNDS=${ROUNDS:-20}
COLD_ROUNDS=${COLD_ROUNDS:-5}
IMAGE=${IMAGE:-shoal/busybox:latest}
IMAGE=${IMAGE#"$REGISTRY_ADDR"/}
SQFS=${SQFS:-$(image_sqfs "$IMAGE")}
CACHE_DIR=${CACHE_DIR:-/var/cache/shoal}
name=${IMAGE%:*}; name=${name##*/}

as_user() { runuser -u "$TESTBED_USER" -- env -i HOME="/home/$TESTBED_USER" USER="$TESTBED_USER" PATH=/usr/local/bin:/usr/bin:/bin bash -c "cd ~ && $1"; }
# One timed step: "TAG MS ROUND" or "TAG failed ROUND".
step() {  # step TAG ROUND CMD
    local t0 t1
    t0=$(date +%s%N)
    if as_user "$3" >/dev/null 2>>"$ERRLOG"; then
        t1=$(date +%s%N); echo "$1 $(( (t1 - t0) / 1000 )) $2"
    else
        echo "$1 failed $2"
    fi
}
declare -A runs=([bare]="srun -N3 -n6 /bin/true"
                 [shoal]="srun -N3 -n6 --image=$REGISTRY_ADDR/$IMAGE /bin/true"
                 [ch-0.31]="srun -N3 -n6 ch-run $SQFS -- /bin/true")
variants=(shoal bare ch-0.31)
TOOL_VERSIONS[shoal]=$(git rev-parse --short HEAD)
TOOL_VERSIONS[ch-0.31]=$(tool_version ch-0.31)
results_open srun
ERRLOG=${RESULTS%.tsv}.err
RAW=$(mktemp)
trap 'rm -f "$RAW"' EXIT
log "load $(cut -d' ' -f1-3 /proc/loadavg); $ROUNDS warm rounds, $COLD_ROUNDS cold; $IMAGE"
for v in "${variants[@]}"; do as_user "${runs[$v]}" >/dev/null; done   # warm-up, stages the image
k=${#variants[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    for i in $(round_order "$k" "$r"); do v=${variants[i]}; step "$v" "$r" "${runs[$v]}"; done
done > "$RAW"
results_add "srun -N3 -n6 /bin/true, warm, $name" ms 1000 "$RAW" "${variants[@]}"
# Cold rounds: bare, then --image with every node cache emptied first.
cold_rounds() {
    for ((r = 1; r <= COLD_ROUNDS; r++)); do
        step bare "$r" "${runs[bare]}"
        rm -rf "${CACHE_DIR:?}"/n[123]/images/*
        step shoal "$r" "${runs[shoal]}"
    done > "$RAW"
}
cold_rounds
results_add "srun -N3 -n6 /bin/true, cold (node caches emptied), $name" ms 1000 "$RAW" shoal bare

# In place (`node.staging = "in-place"`): no node copies the site image;
# each step's image server reads its hash tree and checks the blocks it
# serves. Every step is as cold as the first (no node cache to warm); the
# caches are emptied anyway, as above. The site image must have a tree
# (stored by this Shoal: an older pull is pulled again).
CONF=$SHOAL_CONFIG_FILE
cp "$CONF" "$RAW.conf"
trap 'cp "$RAW.conf" "$CONF"; rm -f "$RAW" "$RAW.conf"' EXIT
if shoal inspect "$REGISTRY_ADDR/$IMAGE" | grep -q '^hash tree:  none'; then
    log "re-pulling $IMAGE into the site store (stored before hash trees)"
    shoal rm --site "$REGISTRY_ADDR/$IMAGE" >/dev/null
    shoal pull --site -q "$REGISTRY_ADDR/$IMAGE"
fi
sed -i 's/^\[node\]$/[node]\nstaging = "in-place"/' "$CONF"
grep -q '^staging = "in-place"' "$CONF" || die "no [node] table in $CONF"
as_user "${runs[shoal]}" >/dev/null
cold_rounds
results_add "same, cold, in place (node.staging = \"in-place\"), $name" ms 1000 "$RAW" shoal bare
cp "$RAW.conf" "$CONF"
echo "# bench/srun.sh, $(date -u +%FT%TZ); results $RESULTS"
bash bench/summary.sh "$RESULTS"
