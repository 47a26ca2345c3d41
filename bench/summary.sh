#!/usr/bin/env bash
# One summary table over benchmark results (bench/lib/bench.sh's format,
# written by bench/launch.sh and bench/pull.sh into bench/results/).
#
#   bash bench/summary.sh [RESULTS.tsv ...]
#       (default: the newest file of each kind in bench/results/)
#
# One row per figure; for every tool its median and spread (interquartile
# range over the median), and for a rival the paired ratio rival / Shoal:
# the median over rounds of its time divided by Shoal's in the same round,
# so above 1.00x means Shoal was faster. Runs, date and the load average
# (1 minute, at the start / end of the run) close each row.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# = 0 ]; then
    files=()
    for kind in launch pull srun; do
        f=$(ls -1t bench/results/"$kind"-*.tsv 2>/dev/null | head -n1 || true)
        [ -z "$f" ] || files+=("$f")
    done
    [ ${#files[@]} -gt 0 ] || { echo "no results in bench/results/: run bench/launch.sh or bench/pull.sh" >&2; exit 1; }
    set -- "${files[@]}"
fi
for f in "$@"; do [ -s "$f" ] || { echo "$f: missing or empty" >&2; exit 1; }; done

cat "$@" | awk -F'\t' '
function label(t, v) {
    if (t == "shoal") return "Shoal " (v == "" ? "" : (length(v) <= 12 ? v : "(" v ")"))
    if (t == "bare") return "bare"
    if (t == "repull") return "Shoal re-pull"
    if (t == "baseline") return "baseline Shoal"
    if (t == "ch-0.31") return "Charliecloud " (v != "" ? v : "0.31")
    if (t == "ch-sid") return "Charliecloud " v
    if (t == "apptainer") return "Apptainer " v
    if (t == "podman") return "podman " v
    if (t == "floor") return "floor (gunzip + zstd)"
    return t " " v
}
{
    fig = $1; tool = $3
    if (!(fig in seen)) { seen[fig] = 1; figs[++nf] = fig }
    if (!(tool in tseen)) { tseen[tool] = 1; tools[++nt] = tool }
    if ($13 != "") ver[tool] = $13
    key = fig SUBSEP tool
    if ($4 == 0) cell[key] = ($10 > 0 ? "failed" : "n/a")
    else {
        cell[key] = sprintf("%s %s ±%s%%", $5, $2, $8)
        if (tool != "shoal" && $9 != "n/a") cell[key] = cell[key] sprintf(", %sx", $9)
        if ($10 > 0) cell[key] = cell[key] sprintf(" (%d failed)", $10)
    }
    if (tool == "shoal" || !(fig in runs)) runs[fig] = $4
    date[fig] = $11; load[fig] = $12
}
END {
    # Known tools in a fixed order, then any other in the order met.
    nk = split("shoal baseline repull ch-0.31 ch-sid apptainer podman floor bare", known, " ")
    k = 0
    for (i = 1; i <= nk; i++) { isknown[known[i]] = 1; if (known[i] in tseen) order[++k] = known[i] }
    for (i = 1; i <= nt; i++) if (!(tools[i] in isknown)) order[++k] = tools[i]
    printf "| figure |"; for (i = 1; i <= k; i++) printf " %s |", label(order[i], ver[order[i]])
    printf " runs | date | load |\n|---|"; for (i = 1; i <= k; i++) printf "---|"; print "---|---|---|"
    for (j = 1; j <= nf; j++) {
        f = figs[j]; printf "| %s |", f
        for (i = 1; i <= k; i++) { c = cell[f SUBSEP order[i]]; printf " %s |", (c == "" ? "" : c) }
        printf " %s | %s | %s |\n", runs[f], date[f], load[f]
    }
    print ""
    print "Median and spread (interquartile range / median) of each tool; after the comma, the paired ratio"
    print "tool / Shoal (median over rounds of each round'"'"'s ratio): above 1.00x, Shoal was faster."
    print "load: 1-minute load average at the start / end of the run."
}'
