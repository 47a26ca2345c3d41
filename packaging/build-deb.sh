#!/usr/bin/env bash
# Builds a Debian package of Shoal from a release build:
#   cargo build --release --workspace && bash packaging/build-deb.sh [OUT_DIR]
# PROFILE=debug packages target/debug instead (the tests do, to build once).
# The package depends on the exact Slurm version the plugin was built
# against (slurmd refuses a plugin built for another version).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/debian}
rel=target/${PROFILE:-release}
for f in "$rel/shoal" "$rel/libspank_shoal.so"; do
    [ -f "$f" ] || { echo "build-deb: $f missing; run cargo build --workspace${PROFILE:+ (profile $PROFILE)}" >&2; exit 1; }
done
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
slurm=$(dpkg-query -W -f='${Version}' libslurm-dev)
arch=$(dpkg --print-architecture)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

install -D -m 0755 "$rel/shoal" "$root/usr/bin/shoal"
install -D -m 0644 "$rel/libspank_shoal.so" "$root/usr/lib/shoal/libspank_shoal.so"
install -D -m 0644 packaging/shoal.toml "$root/etc/shoal/shoal.toml"
install -D -m 0644 packaging/plugstack.conf.d/shoal.conf "$root/etc/slurm/plugstack.conf.d/shoal.conf"
install -D -m 0644 README.md "$root/usr/share/doc/shoal/README.md"
mkdir -p "$root/DEBIAN"
printf '/etc/shoal/shoal.toml\n/etc/slurm/plugstack.conf.d/shoal.conf\n' > "$root/DEBIAN/conffiles"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SLURM@/$slurm/" \
    packaging/debian/control.in > "$root/DEBIAN/control"
mkdir -p "$out"
deb="$out/shoal_${version}_${arch}.deb"
# DEB_FAST=1 trades size for speed (the tests package a debug build).
dpkg-deb --root-owner-group ${DEB_FAST:+-Zgzip -z1} --build "$root" "$deb" >/dev/null
echo "$deb"
