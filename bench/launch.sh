#!/usr/bin/env bash
# Launch latency of `shoal run` against every rival, side by side: each
# round launches the same command once with every tool (the order changing
# from round to round, balanced for which tool came just before: bench.sh's
# round_order), so all see the same machine load.
#
#   bash bench/launch.sh [LAUNCHES]       (root; default 60 a figure, half for numpy)
#
# Tools (TOOLS="..." picks some; default all that are there):
#   shoal      this tree's release build, `shoal run IMG.sqfs -- CMD` (defaults, empty config)
#   ch-0.31    the host's Charliecloud 0.31, `ch-run IMG.sqfs -- CMD`
#   ch-sid     Debian sid's Charliecloud (0.45), `ch-run IMG.sqfs -- CMD`
#   apptainer  sid's Apptainer (1.4), `apptainer exec IMG.sqfs CMD` (unprivileged: squashfuse)
#   podman     sid's podman (5.8), rootless, `podman run --rm` of the same registry image
#              from its own store (native overlay; host network, no cgroups, no log)
#   bare       CMD itself, on the host (busybox /bin/true only)
#   baseline   BASELINE=/path/to/older/shoal: an older build in the same rounds
# Shoal, both ch-runs and Apptainer run the very same squashfs file.
#
# Images (IMAGES="..." picks some): busybox (shoal/busybox:latest),
# debian-mpich (shoal/debian-mpich:12, Debian 12 + MPICH + NumPy) and
# pystack (bench/images.sh: Debian 13 + NumPy, SciPy, pandas, SymPy, about
# 18,000 paths, 11,000 of them Python modules). Figures: `/bin/true` on each,
# `python3 -c 'import numpy'` where the image has it, and on pystack
# `python3 -c 'import sympy, pandas, scipy.linalg'` (many small files).
#
# Sid's tools run in the rivals' namespace (bench/rivals.sh; made here if
# need be); every tool, bare included, is started by the same nsenter from
# one root shell as the test user (bench/lib/bench.sh). SHOAL_BIN=PATH
# times that binary instead of building the release one.
#
# Output: bench/results/launch-*.tsv, and bench/summary.sh's table of it.
# Needs the test bed up (tests/testbed/up.sh): registry and user alice.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/testbed/common.sh
source bench/lib/bench.sh
N=${1:-60}
NUMPY_N=${NUMPY_N:-$(( (N + 1) / 2 ))}
TOOLS=${TOOLS:-shoal ch-0.31 ch-sid apptainer podman bare${BASELINE:+ baseline}}
IMAGES=${IMAGES:-busybox debian-mpich pystack}
has_tool() { [[ " $TOOLS " == *" $1 "* ]]; }

if [ -n "${SHOAL_BIN:-}" ]; then
    SHOAL=$SHOAL_BIN
else
    nice -n 10 cargo build --release -p shoal --locked >/dev/null 2>&1 || nice -n 10 cargo build --release -p shoal --locked
    SHOAL=$PWD/target/release/shoal
fi
[ -x "$SHOAL" ] || die "no shoal binary at $SHOAL"
mkdir -p "$BENCH_STATE/launcher"
CFG=$BENCH_STATE/launcher/empty.toml
: > "$CFG"    # defaults only: the figures must not depend on the node's site config
chmod 0644 "$CFG"
if has_tool ch-0.31 && ! command -v ch-run >/dev/null; then
    log "no ch-run on the host (Debian package charliecloud): ch-0.31 left out"
    TOOLS=${TOOLS/ch-0.31/}
fi
if has_tool ch-sid || has_tool apptainer || has_tool podman; then rivals_up; fi
TOOL_VERSIONS[ch-0.31]=$(has_tool ch-0.31 && tool_version ch-0.31 || true)
TOOL_VERSIONS[ch-sid]=$(has_tool ch-sid && tool_version ch-sid || true)
TOOL_VERSIONS[apptainer]=$(has_tool apptainer && tool_version apptainer || true)
TOOL_VERSIONS[podman]=$(has_tool podman && tool_version podman || true)
TOOL_VERSIONS[shoal]=${SHOAL_BIN:-$(git rev-parse --short HEAD)}

if [[ " $IMAGES " == *" pystack "* ]] && ! registry_digest "${PYSTACK_REF%:*}" "${PYSTACK_REF##*:}" >/dev/null; then
    bash bench/images.sh
fi
# podman runs from its store: pull each image first (not timed here; the
# cold pull is bench/pull.sh's). A store already holding it checks the
# manifest only.
podman_ready() {  # podman_ready REF
    in_rivals podman $(podman_args) pull -q "$REGISTRY_ADDR/$1" >/dev/null
}

# One launch, timed with bash's EPOCHREALTIME from the loop shell: prints
# "TAG MICROSECONDS ROUND" or "TAG failed ROUND". Runs in a subshell with
# exactly BENCH_ENV exported.
HOSTNS=$$
RIVALNS=$(holder_pid "$RIVALS" 2>/dev/null || true)
launch() {  # launch TAG ROUND IMG REF CMD...
    local tag=$1 round=$2 img=$3 ref=$4 s e rc=0 ns=$HOSTNS
    shift 4
    local cmd
    case $tag in
        shoal) cmd=("$SHOAL" --config "$CFG" run "$img" -- "$@") ;;
        baseline) cmd=("$BASELINE" --config "$CFG" run "$img" -- "$@") ;;
        ch-0.31) cmd=(ch-run "$img" -- "$@") ;;
        ch-sid) ns=$RIVALNS cmd=(ch-run "$img" -- "$@") ;;
        apptainer) ns=$RIVALNS cmd=(apptainer -s exec "$img" "$@") ;;
        podman) ns=$RIVALNS cmd=(podman $(podman_args) $PODMAN_RUN_OPTS "$REGISTRY_ADDR/$ref" "$@") ;;
        bare) cmd=("$@") ;;
    esac
    # podman alone gets its runtime directory (the others would see one
    # that does not exist on the host).
    s=$EPOCHREALTIME
    if [ "$tag" = podman ]; then
        XDG_RUNTIME_DIR=/run/user/$BENCH_UID PODMAN_IGNORE_CGROUPSV1_WARNING=1 nsenter -t "$ns" -m -S "$BENCH_UID" -G "$BENCH_GID" -- "${cmd[@]}" >/dev/null 2>>"$ERRLOG" || rc=$?
    else
        nsenter -t "$ns" -m -S "$BENCH_UID" -G "$BENCH_GID" -- "${cmd[@]}" >/dev/null 2>>"$ERRLOG" || rc=$?
    fi
    e=$EPOCHREALTIME
    if [ $rc = 0 ]; then echo "$tag $(( ${e/./} - ${s/./} )) $round"; else echo "$tag failed $round"; echo "($tag round $round: exit $rc)" >> "$ERRLOG"; fi
}
# measure FIGURE IMG REF N TOOLS -- CMD...: warm-up, then N rounds.
measure() {
    local fig=$1 img=$2 ref=$3 n=$4 tools=($5) raw
    shift 6
    raw=$(mktemp)
    log "$fig: ${tools[*]}, $n rounds"
    (
        for v in $(compgen -e); do export -n "$v" 2>/dev/null || true; done   # values kept, not passed on
        for kv in "${BENCH_ENV[@]}"; do export "${kv?}"; done
        local t r i k=${#tools[@]}
        for r in 1 2 3; do for t in "${tools[@]}"; do launch "$t" 0 "$img" "$ref" "$@" >/dev/null; done; done
        for ((r = 1; r <= n; r++)); do
            for i in $(round_order "$k" "$r"); do launch "${tools[i]}" "$r" "$img" "$ref" "$@"; done
        done
    ) > "$raw"
    results_add "$fig" ms 1000 "$raw" "${tools[@]}"
    rm -f "$raw"
}

results_open launch
ERRLOG=${RESULTS%.tsv}.err
log "$(uname -r), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); tools: $TOOLS; images: $IMAGES"
for name in $IMAGES; do
    ref=$(image_ref "$name")
    img=$(image_sqfs "$ref")
    ! has_tool podman || podman_ready "$ref" || { log "podman could not pull $ref; see above"; exit 1; }
    tools=""
    for t in shoal baseline ch-0.31 ch-sid apptainer podman; do has_tool "$t" && tools+="$t "; done
    figtools=$tools
    [ "$name" != busybox ] || ! has_tool bare || figtools+="bare"
    measure "/bin/true, $name" "$img" "$ref" "$N" "$figtools" -- /bin/true
    if [ "$name" != busybox ]; then
        measure "import numpy, $name" "$img" "$ref" "$NUMPY_N" "$tools" -- python3 -c 'import numpy'
    fi
    if [ "$name" = pystack ]; then
        # The many-small-files start: about 1,300 modules of three packages.
        measure "import sympy+pandas+scipy.linalg, $name" "$img" "$ref" "$NUMPY_N" "$tools" -- python3 -c 'import sympy, pandas, scipy.linalg'
    fi
done
[ ! -s "$ERRLOG" ] || log "errors of failed launches: $ERRLOG"
echo "# bench/launch.sh, $(date -u +%FT%TZ), $(uname -r), $(nproc) cores; results $RESULTS"
bash bench/summary.sh "$RESULTS"
