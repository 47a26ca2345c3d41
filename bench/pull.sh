#!/usr/bin/env bash
# Cold pull of the big test image (shoal/debian-mpich:12, ~180 MB compressed,
# two layers) from the local TLS registry into one squashfs, Shoal against
# Charliecloud 0.31 (`ch-image pull` then `ch-convert` to squashfs), side
# by side in one run, alternating, as the unprivileged test user. Then the
# re-pull of the unchanged image. Prints a Markdown table (BENCHMARKS.md).
#
#   bash bench/pull.sh [ROUNDS]        (root; default 3 rounds)
#
# "Cold" means an empty store on both sides (no layer cache; ch-image runs
# with --no-cache, as it must here). The registry's files are in the page
# cache for both, equally. Wall, user+sys CPU (the command and every child
# it waited for) and peak RSS (the largest single process) come from GNU
# time. Needs the test bed up (tests/testbed/up.sh) and builds
# `cargo build --release -p shoal`.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/testbed/common.sh
ROUNDS=${1:-3}
IMAGE=$REGISTRY_ADDR/shoal/debian-mpich:12
command -v /usr/bin/time >/dev/null || die "GNU time missing: bash tests/testbed/setup.sh"
command -v ch-image >/dev/null || die "Charliecloud missing: bash tests/testbed/setup.sh"

cargo build --release -p shoal --locked >&2
SHOAL_BIN=$(pwd)/target/release/shoal
WORK=/home/$TESTBED_USER/bench-pull
# Shoal's build dir must be reachable by the user.
[ -x "$SHOAL_BIN" ] && runuser -u "$TESTBED_USER" -- test -x "$SHOAL_BIN" || die "$SHOAL_BIN not executable by $TESTBED_USER"

as_user() {  # as_user SCRIPT: a clean login-like environment
    runuser -u "$TESTBED_USER" -- env -i HOME="/home/$TESTBED_USER" USER="$TESTBED_USER" LOGNAME="$TESTBED_USER" \
        PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 bash -c "$1"
}
# measure NAME SCRIPT: one timed run as the user; appends "NAME wall cpu rss_kb"
measure() {
    local out
    out=$(as_user "cd $WORK && /usr/bin/time -f 'TIME %e %U %S %M' bash -c '$2' 2>&1 >/dev/null | grep '^TIME' | tail -n1") \
        || die "$1 failed"
    [ -n "$out" ] || die "$1 failed (no timing; run it by hand to see why)"
    read -r _ wall user sys rss <<<"$out"
    local cpu
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
    echo "$1 $wall $cpu $rss" >> "$RESULTS"
    log "$1: ${wall}s wall, ${cpu}s CPU, $((rss / 1024)) MB peak RSS"
}

as_user "rm -rf $WORK && mkdir -p $WORK"
RESULTS=$(mktemp)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
SHOAL_ENV="XDG_DATA_HOME=$WORK/shoal-store SSL_CERT_FILE=$CA_CERT SHOAL_CONFIG=/dev/null"
CH_ENV="CH_IMAGE_STORAGE=$WORK/ch-store REQUESTS_CA_BUNDLE=$CA_CERT"
shoal_cold() { as_user "rm -rf $WORK/shoal-store"; measure shoal "$SHOAL_ENV $SHOAL_BIN pull -q $IMAGE"; }
ch_cold() {
    as_user "rm -rf $WORK/ch-store $WORK/ch.sqfs"
    measure charliecloud "$CH_ENV ch-image --no-cache pull $IMAGE && $CH_ENV ch-convert -i ch-image -o squash $IMAGE $WORK/ch.sqfs"
}
for r in $(seq 1 "$ROUNDS"); do
    log "round $r of $ROUNDS"
    if [ $((r % 2)) = 1 ]; then shoal_cold; ch_cold; else ch_cold; shoal_cold; fi
done
# Re-pull of the unchanged image (the store from the last cold pull).
for r in $(seq 1 5); do measure repull "$SHOAL_ENV $SHOAL_BIN pull -q $IMAGE"; done

sizes=$(as_user "stat -c %s $WORK/shoal-store/shoal/images/sha256/*/image.sqfs $WORK/ch.sqfs" | tr '\n' ' ')
as_user "rm -rf $WORK"

median() { awk -v n="$1" -v col="$2" '$1 == n { print $col }' "$RESULTS" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
s_wall=$(median shoal 2) c_wall=$(median charliecloud 2)
echo
echo "Machine: $(nproc) cores, $(uname -r); image $IMAGE; $ROUNDS rounds, medians; $(date -u +%Y-%m-%d)"
echo "Load average (1/5/15 min) at start: $load_start; at end: $(cut -d' ' -f1-3 /proc/loadavg) (other builds share the machine)"
echo
echo "| step | wall s | CPU s | peak RSS MB |"
echo "|---|---|---|---|"
for n in shoal charliecloud repull; do
    printf '| %s | %s | %s | %s |\n' "$n" "$(median $n 2)" "$(median $n 3)" "$(( $(median $n 4) / 1024 ))"
done
echo
echo "Charliecloud / Shoal, cold pull to squashfs (wall): $(awk -v c="$c_wall" -v s="$s_wall" 'BEGIN { printf "%.1f", c / s }')x"
echo "squashfs sizes (bytes, Shoal then Charliecloud): $sizes"
echo
echo "All runs (name wall cpu rss_kb):"
sed 's/^/    /' "$RESULTS"
rm -f "$RESULTS"
