#!/usr/bin/env bash
# Prints a directory holding SERIES's <slurm/spank.h>, for SLURM_INCLUDE_DIR:
#
#   slurm-headers/fetch.sh 24.11     -> .../24.11-24.11.5-4+deb13u1/usr/include/slurm
#
# 22.05 is the host's /usr/include/slurm (Debian 12's libslurm-dev). 24.11
# and 26.05 are Debian trixie's and sid's libslurm-dev, downloaded with a
# private apt config (nothing is installed and the host's apt sources are
# not changed) and unpacked with dpkg-deb -x; cached by exact version under
# $SLURM_HEADERS_CACHE (default target/slurm-headers). Needs no root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/apt.sh"
[ $# = 1 ] || { echo "usage: $0 SERIES   (22.05, 24.11 or 26.05)" >&2; exit 2; }
series=$1
suite=$(series_suite "$series")
if [ "$suite" = host ]; then
    [ -f /usr/include/slurm/spank.h ] || { echo "error: /usr/include/slurm/spank.h missing: apt-get install libslurm-dev" >&2; exit 1; }
    echo /usr/include/slurm
    exit 0
fi
cache=${SLURM_HEADERS_CACHE:-$here/../target/slurm-headers}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
conf=$(private_apt "$cache/apt" "$suite")
version=$(apt_candidate "$conf" libslurm-dev)
dir=$cache/$series-$version
if [ ! -f "$dir/usr/include/slurm/spank.h" ]; then
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    (cd "$dir.tmp" && APT_CONFIG=$conf apt-get download -qq "libslurm-dev=$version" >/dev/null) \
        || { echo "error: apt-get download libslurm-dev=$version ($suite) failed" >&2; exit 1; }
    dpkg-deb -x "$dir.tmp"/libslurm-dev_*.deb "$dir.tmp/x"
    rm -rf "$dir" && mkdir -p "$dir"
    mv "$dir.tmp/x/usr" "$dir/usr"
    rm -rf "$dir.tmp"
fi
n=$(awk '/#define SLURM_VERSION_NUMBER/ {print $3}' "$dir/usr/include/slurm/slurm_version.h")
ver_series=$(printf '%d.%02d' $((n >> 16)) $(((n >> 8) & 255)))
[ "$ver_series" = "$series" ] || { echo "error: $suite's libslurm-dev $version is Slurm $ver_series, not $series" >&2; exit 1; }
echo "$dir/usr/include/slurm"
