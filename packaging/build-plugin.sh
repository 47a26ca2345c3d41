#!/usr/bin/env bash
# Builds Shoal's SPANK plugin for each Slurm series given:
#
#   bash packaging/build-plugin.sh [--release] SERIES...    e.g. 22.05 24.11 26.05
#
# Each lands in target/<profile>/slurm-SERIES/libspank_shoal.so, built
# against that series' headers (slurm-headers/fetch.sh: the host's for
# 22.05, Debian trixie's libslurm-dev for 24.11, sid's for 26.05) with its
# SLURM_VERSION_NUMBER: slurmd loads a plugin only if `plugin_version`
# matches its own major.minor. target/<profile>/libspank_shoal.so is left
# built for the host's Slurm, as a plain `cargo build` makes it.
#
# For another series, point SLURM_INCLUDE_DIR at its `slurm/` header
# directory and run `cargo build -p spank-shoal` (README, "Slurm versions").
set -euo pipefail
cd "$(dirname "$0")/.."
profile=debug
flags=(--locked -p spank-shoal)
if [ "${1:-}" = --release ]; then
    profile=release
    flags+=(--release)
    shift
fi
[ $# -gt 0 ] || { echo "usage: $0 [--release] SERIES...   (22.05, 24.11, 26.05)" >&2; exit 2; }
out=${CARGO_TARGET_DIR:-target}/$profile
for series in "$@"; do
    include=$(bash slurm-headers/fetch.sh "$series")
    SLURM_INCLUDE_DIR=$include cargo build "${flags[@]}"
    install -D -m 0755 "$out/libspank_shoal.so" "$out/slurm-$series/libspank_shoal.so"
    echo "build-plugin: $out/slurm-$series/libspank_shoal.so (headers $include)" >&2
done
env -u SLURM_INCLUDE_DIR cargo build "${flags[@]}"
