#!/usr/bin/env bash
# Launch latency of `shoal run` against Charliecloud's `ch-run` (same
# squashfs file, same user, launches alternating so both see the same
# machine load) and bare /bin/true; then a metadata-heavy start
# (`python3 -c 'import numpy'`) in the Debian + MPICH + NumPy test image.
#
#   bash bench/launch.sh [LAUNCHES]      (default 60; run as root)
#   BASELINE=/path/to/older/shoal bash bench/launch.sh ...
#       also times an older `shoal` build in the same alternation (a change
#       measured against what it replaces, under the same load)
#
# Prints one line per measurement (median, p10, p90 in ms), the ratios of
# the medians, and the median of the per-iteration ratios (paired: the
# steadier figure on a machine whose speed drifts);
# BENCHMARKS.md records a run. Needs the test bed up (tests/testbed/up.sh)
# for the registry image and the user `alice`.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-60}
USER_NAME=${TESTBED_USER:-alice}
STATE=${TESTBED_STATE:-/var/lib/shoal-testbed}
BENCH=$STATE/bench/launcher
REG=127.0.0.1:5443
mkdir -p "$BENCH"
# Defaults only: the benchmark must not depend on the node's site config.
: > "$BENCH/shoal.toml"

cargo build --release -p shoal --locked >/dev/null 2>&1 || cargo build --release -p shoal --locked
SHOAL=$PWD/target/release/shoal
[ -x "$SHOAL" ] || { echo "no release build" >&2; exit 1; }
command -v ch-run >/dev/null || { echo "ch-run (Debian package charliecloud) missing" >&2; exit 1; }

# The small image: the launcher tests' busybox fixture.
bash tests/testbed/launcher-fixtures.sh "$STATE/launcher"
SMALL=$BENCH/busybox.sqfs
install -m 0644 "$STATE/launcher/busybox.sqfs" "$SMALL"

# The big image: shoal/debian-mpich:12 from the test registry, unpacked and
# squashed once (zstd level 3), cached by manifest digest.
BIG=
digest=$(curl -sf --cacert "$STATE/tls/cert.pem" -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' -o /dev/null -w '%header{docker-content-digest}' \
    "https://$REG/v2/shoal/debian-mpich/manifests/12" || true)
if [ -n "$digest" ]; then
    BIG=$BENCH/debian-mpich-${digest#sha256:}.sqfs
    BIG=${BIG:0:${#BENCH}+30}.sqfs
    if [ ! -f "$BIG" ]; then
        echo "building $BIG from $REG/shoal/debian-mpich:12 ($digest)" >&2
        rm -rf "$BENCH/oci" "$BENCH/bundle"
        skopeo copy -q --src-cert-dir "$STATE/tls/skopeo" "docker://$REG/shoal/debian-mpich:12" "oci:$BENCH/oci:12"
        umoci unpack --image "$BENCH/oci:12" "$BENCH/bundle" >/dev/null
        mksquashfs "$BENCH/bundle/rootfs" "$BIG.tmp" -comp zstd -Xcompression-level 3 -no-xattrs -quiet -no-progress >/dev/null
        chmod 0644 "$BIG.tmp" && mv "$BIG.tmp" "$BIG"
        rm -rf "$BENCH/oci" "$BENCH/bundle"
    fi
else
    echo "shoal/debian-mpich:12 not in the registry: the numpy start is not measured" >&2
fi

# One alternating loop per image, as the user; each launch timed with
# bash's EPOCHREALTIME (the fork+exec of bash itself is in every figure,
# bare /bin/true shows how much).
measure() {  # measure IMAGE N CMD...   -> lines "shoal MS", "ch-run MS", "bare MS"
    local img=$1 n=$2; shift 2
    runuser -u "$USER_NAME" -- env -i HOME=/tmp USER="$USER_NAME" PATH=/usr/bin:/bin bash -c '
        img=$1; n=$2; shoal=$3; bare=$4; cfg=$5; base=$6; shift 6
        cd /tmp
        t() { local s=$EPOCHREALTIME; "$@" >/dev/null 2>&1 || echo "failed: $*" >&2; local e=$EPOCHREALTIME; echo "$(( (${e/./} - ${s/./}) ))"; }
        for i in $(seq 1 3); do "$shoal" --config "$cfg" run "$img" -- "$@" >/dev/null 2>&1; ch-run "$img" -- "$@" >/dev/null 2>&1; done
        for i in $(seq 1 "$n"); do
            echo "shoal $(t "$shoal" --config "$cfg" run "$img" -- "$@")"
            echo "ch-run $(t ch-run "$img" -- "$@")"
            if [ -n "$base" ]; then echo "baseline $(t "$base" --config "$cfg" run "$img" -- "$@")"; fi
            if [ "$bare" = 1 ]; then echo "bare $(t "$@")"; fi
        done' _ "$img" "$n" "$SHOAL" "${BARE:-0}" "$BENCH/shoal.toml" "${BASELINE:-}" "$@"
}
stats() {  # stats TAG < "tag usec" lines -> "median p10 p90" in ms
    awk -v tag="$1" '$1==tag {print $2}' | sort -n | awk '{a[NR]=$1} END {
        if (NR == 0) { print "n/a"; exit }
        printf "%.2f %.2f %.2f %d\n", a[int((NR+1)/2)]/1000, a[int(NR*0.1)+1]/1000, a[int(NR*0.9)]/1000, NR }'
}
paired() {  # paired TAG < lines -> median over iterations of ch-run/TAG
    # Each iteration's two launches run back to back, so their ratio cancels
    # the machine's slow and fast periods (seconds long on this VM), which
    # move whole-run medians by 10% or more.
    awk -v tag="$1" '$1==tag {x[++n]=$2} $1=="ch-run" {c[++m]=$2}
        END { for (i = 1; i <= n && i <= m; i++) if (x[i] > 0) print c[i] / x[i] }' | sort -g |
        awk '{a[NR]=$1} END { if (NR == 0) print "n/a"; else printf "%.2f (p25 %.2f, p75 %.2f)\n", a[int((NR+1)/2)], a[int(NR/4)+1], a[int(NR*3/4)] }'
}
report() {  # report FILE TITLE
    local f=$1 s c b o
    s=$(stats shoal < "$f"); c=$(stats ch-run < "$f"); b=$(stats bare < "$f"); o=$(stats baseline < "$f")
    echo "## $2"
    echo "shoal run   median/p10/p90/n: $s"
    echo "ch-run      median/p10/p90/n: $c"
    [ "$o" = n/a ] || echo "baseline    median/p10/p90/n: $o"
    [ "$b" = n/a ] || echo "bare        median/p10/p90/n: $b"
    awk -v s="${s%% *}" -v c="${c%% *}" -v b="${b%% *}" -v o="${o%% *}" 'BEGIN {
        printf "ratio ch-run/shoal: %.2f\n", c/s
        if (o != "n/a" && o > 0) printf "ratio ch-run/baseline: %.2f\n", c/o
        if (b != "n/a" && b > 0) printf "ratio shoal/bare: %.2f\n", s/b }'
    echo "paired ch-run/shoal (median of per-iteration ratios): $(paired shoal < "$f")"
    [ "$o" = n/a ] || echo "paired ch-run/baseline: $(paired baseline < "$f")"
}

out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "# $(date -u +%FT%TZ) $(uname -r), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $N launches each, alternating"
BARE=1 measure "$SMALL" "$N" /bin/true > "$out"
report "$out" "/bin/true, busybox image ($(stat -c %s "$SMALL") bytes)"
if [ -n "$BIG" ]; then
    BARE=0 measure "$BIG" "$N" /bin/true > "$out"
    report "$out" "/bin/true, debian-mpich image ($(stat -c %s "$BIG") bytes)"
    BARE=0 measure "$BIG" "$(( (N + 1) / 2 ))" python3 -c 'import numpy' > "$out"
    report "$out" "python3 -c 'import numpy', debian-mpich image"
    # OpenBLAS starts one spinning thread per core at import; on a loaded
    # 2-core node they compete with the FUSE server. One thread isolates
    # the file-system part of the start.
    BARE=0 measure "$BIG" "$(( (N + 1) / 2 ))" env OPENBLAS_NUM_THREADS=1 python3 -c 'import numpy' > "$out"
    report "$out" "OPENBLAS_NUM_THREADS=1 python3 -c 'import numpy', debian-mpich image"
fi
