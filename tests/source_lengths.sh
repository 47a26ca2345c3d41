#!/usr/bin/env bash
# No Rust source file of the launcher or the plugin is longer than LIMIT
# lines (issue 12: a file that long holds more than one job; split it by
# job, its unit tests into a sibling file). Prints the offenders.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${1:-720}
long=$(find launcher/src spank-plugin/src -name '*.rs' -print0 | xargs -0 wc -l | awk -v l="$limit" '$2 != "total" && $1 > l')
if [ -n "$long" ]; then
    echo "source_lengths: over $limit lines (split by job):" >&2
    echo "$long" >&2
    exit 1
fi
