#!/usr/bin/env bash
# Builds a Debian package of Shoal from a release build:
#   cargo build --release --workspace && bash packaging/build-deb.sh [OUT_DIR]
# PROFILE=debug packages target/debug instead (the tests do, to build once).
# The package depends on the exact Slurm version the plugin was built
# against (slurmd refuses a plugin built for another version).
#
# SLURM_SERIES=24.11 (or 26.05) packages target/<profile>/slurm-SERIES/
# (packaging/build-plugin.sh) for that series' Debian Slurm instead: the
# package is shoal-slurm-24.11_VERSION_ARCH.deb and depends on trixie's exact
# slurm-client version (sid's for 26.05). Default: the host's Slurm.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/debian}
rel=${CARGO_TARGET_DIR:-target}/${PROFILE:-release}
so_dir=$rel
series=${SLURM_SERIES:-}
if [ -n "$series" ]; then
    so_dir=$rel/slurm-$series
    [ -f "$so_dir/libspank_shoal.so" ] || { echo "build-deb: $so_dir/libspank_shoal.so missing; run bash packaging/build-plugin.sh${PROFILE:+}$( [ "${PROFILE:-release}" = release ] && echo " --release") $series" >&2; exit 1; }
fi
for f in "$rel/shoal" "$so_dir/libspank_shoal.so"; do
    [ -f "$f" ] || { echo "build-deb: $f missing; run cargo build --workspace${PROFILE:+ (profile $PROFILE)}" >&2; exit 1; }
done
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
if [ -z "$series" ]; then
    slurm=$(dpkg-query -W -f='${Version}' libslurm-dev)
    name=shoal
else
    # The exact version whose headers built the plugin (slurm-headers/fetch.sh).
    headers=$(bash slurm-headers/fetch.sh "$series")
    slurm=$(basename "$(dirname "$(dirname "$(dirname "$headers")")")")
    slurm=${slurm#"$series"-}
    name=shoal-slurm-$series
fi
arch=$(dpkg --print-architecture)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

install -D -m 0755 "$rel/shoal" "$root/usr/bin/shoal"
install -D -m 0644 "$so_dir/libspank_shoal.so" "$root/usr/lib/shoal/libspank_shoal.so"
install -D -m 0644 packaging/shoal.toml "$root/etc/shoal/shoal.toml"
install -D -m 0644 packaging/plugstack.conf.d/shoal.conf "$root/etc/slurm/plugstack.conf.d/shoal.conf"
install -D -m 0644 README.md "$root/usr/share/doc/shoal/README.md"
mkdir -p "$root/DEBIAN"
printf '/etc/shoal/shoal.toml\n/etc/slurm/plugstack.conf.d/shoal.conf\n' > "$root/DEBIAN/conffiles"
sed -e "s/^Package: shoal$/Package: $name/" -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SLURM@/$slurm/" \
    packaging/debian/control.in > "$root/DEBIAN/control"
mkdir -p "$out"
deb="$out/${name}_${version}_${arch}.deb"
# DEB_FAST=1 trades size for speed (the tests package a debug build).
dpkg-deb --root-owner-group ${DEB_FAST:+-Zgzip -z1} --build "$root" "$deb" >/dev/null
echo "$deb"
