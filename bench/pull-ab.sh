#!/usr/bin/env bash
# Two Shoal builds' cold pulls of one image, interleaved round by round (A
# then B, every round), optionally over a slower link: how a change to the
# pull pipeline moves its wall time.
#
#   A=/tmp/shoal-old B=target/release/shoal RATE=400mbit ROUNDS=4 bash bench/pull-ab.sh
#
# Root, test bed up, under the cluster lock. RATE (a tc rate: 400mbit,
# 1gbit) shapes all of lo with a token bucket for the run (removed on
# exit): the registry is then as far as a site's, whose pulls are bounded
# by the link, not by this machine's two cores. IMAGE: a repository of the
# test registry (default shoal/debian-mpich:12). Prints each build's
# times and medians, and B / A.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/testbed/common.sh
A=${A:?the first build (A=PATH)} B=${B:?the second build (B=PATH)}
ROUNDS=${ROUNDS:-4} IMAGE=${IMAGE:-shoal/debian-mpich:12}
W=$(mktemp -d /tmp/pull-ab.XXXXXX)
trap 'rm -rf "$W"; [ -z "${RATE:-}" ] || tc qdisc del dev lo root 2>/dev/null || true' EXIT
[ -z "${RATE:-}" ] || tc qdisc add dev lo root tbf rate "$RATE" burst 1mb latency 50ms
once() {  # once BINARY -> milliseconds
    rm -rf "$W/store"
    local s e
    s=$(date +%s%N)
    XDG_DATA_HOME=$W/store SSL_CERT_FILE=$CA_CERT SHOAL_CONFIG=/dev/null "$1" pull -q "$REGISTRY_ADDR/$IMAGE" >/dev/null
    e=$(date +%s%N)
    echo $(( (e - s) / 1000000 ))
}
a=() b=()
for ((r = 1; r <= ROUNDS; r++)); do a+=("$(once "$A")"); b+=("$(once "$B")"); done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print (NR % 2 ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2)}'; }
ma=$(median "${a[@]}") mb=$(median "${b[@]}")
echo "# bench/pull-ab.sh $(date -u +%FT%TZ) $IMAGE rate=${RATE:-unshaped} load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "A $A: ${a[*]} ms, median $ma"
echo "B $B: ${b[*]} ms, median $mb"
awk -v a="$ma" -v b="$mb" 'BEGIN {printf "B / A: %.2fx\n", b / a}'
