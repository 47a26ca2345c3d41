#!/usr/bin/env bash
# Cold pull from the local TLS registry to a runnable image, Shoal against
# every rival that can pull from it, side by side, alternating (the order
# changing each round: bench.sh's round_order), as the unprivileged test
# user; then re-pulls of the unchanged image.
#
#   bash bench/pull.sh [ROUNDS]        (root; default 3 rounds)
#
# Tools (TOOLS="..." picks some; default all that are there):
#   shoal      `shoal pull` into an empty store (layers to one zstd:3 squashfs)
#   ch-0.31    the host's Charliecloud 0.31: `ch-image --no-cache pull`, then
#              `ch-convert -i ch-image -o squash` (its squashfs)
#   ch-sid     the same with sid's Charliecloud 0.45
#   apptainer  sid's Apptainer: `apptainer pull X.sif docker://...`, empty cache
#   podman     sid's podman: `podman pull` into an empty store (unpacked layers:
#              podman has no single-file image; it is what it runs from)
#   floor      not a puller: the machine's floor for any gzip-layer pull to a
#              zstd:3 image, GNU `gzip -dc` of every layer blob (fetched
#              beforehand, in the page cache) into `zstd -3 -T0` (both cores);
#              no download, tar parsing or squashfs tables. Its ratio in the
#              table is floor / Shoal: 0.77x or more is "within 1.3x of it".
# Images (IMAGES="..."): debian-mpich (default; shoal/debian-mpich:12, two
# gzip layers, ~120 MB compressed), busybox, pystack (bench/images.sh).
#
# "Cold" means an empty store and cache on every side. The registry's
# files are in the page cache for all alike. Wall, user+sys CPU (the
# command and every child it waited for) and peak RSS (the largest single
# process) come from GNU time, run in the tool's own namespace. Output:
# bench/results/pull-*.tsv and bench/summary.sh's table of it. Needs the
# test bed up (tests/testbed/up.sh). SHOAL_BIN=PATH times that binary
# instead of building the release one.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/testbed/common.sh
source bench/lib/bench.sh
ROUNDS=${1:-3}
REPULLS=${REPULLS:-5}
TOOLS=${TOOLS:-shoal ch-0.31 ch-sid apptainer podman floor}
IMAGES=${IMAGES:-debian-mpich}
has_tool() { [[ " $TOOLS " == *" $1 "* ]]; }
command -v /usr/bin/time >/dev/null || die "GNU time missing: bash tests/testbed/setup.sh"
if has_tool ch-0.31 && ! command -v ch-image >/dev/null; then
    log "no ch-image on the host (Debian package charliecloud): ch-0.31 left out"
    TOOLS=${TOOLS/ch-0.31/}
fi

if [ -n "${SHOAL_BIN:-}" ]; then
    SHOAL=$SHOAL_BIN
else
    nice -n 10 cargo build --release -p shoal --locked >&2
    SHOAL=$PWD/target/release/shoal
fi
in_host test -x "$SHOAL" || die "$SHOAL is not executable by $TESTBED_USER"
if has_tool ch-sid || has_tool apptainer || has_tool podman; then rivals_up; fi
TOOL_VERSIONS[ch-0.31]=$(has_tool ch-0.31 && tool_version ch-0.31 || true)
TOOL_VERSIONS[ch-sid]=$(has_tool ch-sid && tool_version ch-sid || true)
TOOL_VERSIONS[apptainer]=$(has_tool apptainer && tool_version apptainer || true)
TOOL_VERSIONS[podman]=$(has_tool podman && tool_version podman || true)
TOOL_VERSIONS[shoal]=${SHOAL_BIN:-$(git rev-parse --short HEAD)}
TOOL_VERSIONS[repull]=${TOOL_VERSIONS[shoal]}

W=$BENCH_HOME/pull
# Empties TAG's store (as root: podman's holds files of subordinate ids).
clean() {  # clean TAG
    case $1 in
        shoal|repull) rm -rf "$W/shoal-store" ;;
        ch-0.31) rm -rf "$W/ch-store" "$W/ch.sqfs" ;;
        ch-sid) rm -rf "$W/chsid-store" "$W/chsid.sqfs" ;;
        apptainer) rm -rf "$W/app-cache" "$W/app.sif" ;;
        podman) rm -rf "$W/podman" ;;
        floor) ;;   # nothing stored: the blobs are its input
    esac
}
# The floor's input: every layer blob of IMAGE (REGISTRY/REPO:TAG), fetched
# once before the rounds into $W/blobs, readable by the user.
fetch_blobs() {  # fetch_blobs IMAGE
    local ref=${1#*/} repo tag d
    repo=${ref%:*} tag=${ref##*:}
    install -d -o "$BENCH_UID" -g "$BENCH_GID" "$W/blobs"
    for d in $(curl -fsS --cacert "$CA_CERT" \
            -H 'Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' \
            "https://$REGISTRY_ADDR/v2/$repo/manifests/$tag" |
            python3 -c 'import json, sys; print("\n".join(l["digest"] for l in json.load(sys.stdin)["layers"]))'); do
        curl -fsS --cacert "$CA_CERT" -o "$W/blobs/${d#sha256:}" "https://$REGISTRY_ADDR/v2/$repo/blobs/$d" ||
            die "fetching layer $d of $1 for the floor failed"
    done
    chmod -R a+rX "$W/blobs"
    cat "$W/blobs"/* > /dev/null    # in the page cache, as the registry's files are
}
# The pull as a shell line for TAG, run as the user in its namespace.
script() {  # script TAG IMAGE
    local img=$2
    case $1 in
        shoal|repull) echo "XDG_DATA_HOME=$W/shoal-store SSL_CERT_FILE=$CA_CERT SHOAL_CONFIG=/dev/null $SHOAL pull -q $img" ;;
        ch-0.31) echo "export CH_IMAGE_STORAGE=$W/ch-store REQUESTS_CA_BUNDLE=$CA_CERT; ch-image --no-cache pull $img && ch-convert -i ch-image -o squash $img $W/ch.sqfs" ;;
        ch-sid) echo "export CH_IMAGE_STORAGE=$W/chsid-store REQUESTS_CA_BUNDLE=$CA_CERT; ch-image --no-cache pull $img && ch-convert -i ch-image -o squash $img $W/chsid.sqfs" ;;
        apptainer) echo "APPTAINER_CACHEDIR=$W/app-cache apptainer -s pull $W/app.sif docker://$img" ;;
        podman) echo "podman $(podman_args "$W/podman") pull -q $img" ;;
        floor) echo "for b in $W/blobs/*; do gzip -dc \"\$b\"; done | zstd -q -3 -T0 > /dev/null" ;;
    esac
}
# measure TAG ROUND IMAGE: one timed pull; appends to the raw files.
measure() {
    local tag=$1 round=$2 img=$3 out rc=0 run=in_host
    case $tag in ch-sid|apptainer|podman) run=in_rivals ;; esac
    # The pull's own output goes to ERRLOG; GNU time's line is all that
    # is left on stderr.
    local s e
    s=$EPOCHREALTIME
    out=$($run /usr/bin/time -f 'TIME %e %U %S %M' bash -c "cd $W && { $(script "$tag" "$img"); } >/dev/null 2>>$ERRLOG" 2>&1 >/dev/null | grep '^TIME' | tail -n1) || rc=$?
    if [ $rc != 0 ] || [ -z "$out" ]; then
        log "$tag (round $round) failed; see $ERRLOG"
        echo "($tag round $round failed)" >> "$ERRLOG"
        for f in wall cpu rss; do echo "$tag failed $round" >> "$RAW.$f"; done
        return 0
    fi
    e=$EPOCHREALTIME
    # Wall from the shell's clock (GNU time's %e has 10 ms steps, too coarse
    # for a re-pull); it includes the nsenter and the shell, a few ms.
    read -r _ _ user sys rss <<<"$out"
    wall=$(awk -v s="${s/./}" -v e="${e/./}" 'BEGIN { printf "%.3f", (e - s) / 1e6 }')
    echo "$tag $wall $round" >> "$RAW.wall"
    awk -v t="$tag" -v u="$user" -v s="$sys" -v r="$round" 'BEGIN { printf "%s %.2f %s\n", t, u + s, r }' >> "$RAW.cpu"
    echo "$tag $rss $round" >> "$RAW.rss"
    log "$tag round $round: ${wall}s wall, $((rss / 1024)) MB peak RSS"
}

results_open pull
ERRLOG=$(pwd)/${RESULTS%.tsv}.err
: > "$ERRLOG" && chmod 0666 "$ERRLOG"    # the user's pulls append to it
RAW=$(mktemp)
trap 'rm -f "$RAW" "$RAW".*' EXIT
tools=()
for t in shoal ch-0.31 ch-sid apptainer podman floor; do has_tool "$t" && tools+=("$t"); done
log "$(uname -r), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); tools: ${tools[*]}; images: $IMAGES"
for name in $IMAGES; do
    img=$REGISTRY_ADDR/$(image_ref "$name")
    rm -rf "$W" && install -d -o "$BENCH_UID" -g "$BENCH_GID" "$W"
    : > "$RAW.wall"; : > "$RAW.cpu"; : > "$RAW.rss"
    if has_tool floor; then fetch_blobs "$img"; fi
    k=${#tools[@]}
    for ((r = 1; r <= ROUNDS; r++)); do
        log "$name: round $r of $ROUNDS"
        for i in $(round_order "$k" "$r"); do
            t=${tools[i]}
            clean "$t"
            measure "$t" "$r" "$img"
        done
    done
    results_add "cold pull, wall, $name" s 1 "$RAW.wall" "${tools[@]}"
    results_add "cold pull, CPU, $name" s 1 "$RAW.cpu" "${tools[@]}"
    results_add "cold pull, peak RSS, $name" MB 1024 "$RAW.rss" "${tools[@]}"
    # Re-pull of the unchanged image, from the last cold pull's store.
    if has_tool shoal; then
        : > "$RAW.wall"
        for ((r = 1; r <= REPULLS; r++)); do measure repull "$r" "$img"; done
        results_add "re-pull unchanged, wall, $name" s 1 "$RAW.wall" repull
    fi
    rm -rf "$W"
done
echo "# bench/pull.sh, $(date -u +%FT%TZ), $(uname -r), $(nproc) cores; results $RESULTS"
bash bench/summary.sh "$RESULTS"
