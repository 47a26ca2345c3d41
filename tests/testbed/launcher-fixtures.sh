#!/usr/bin/env bash
# Squashfs fixtures for tests/launcher.rs (runs as root, idempotent):
#   DIR/busybox.sqfs   busybox userland, a marker only the image has, and a
#                      setuid-root copy of busybox (/usr/bin/busybox-suid);
#   DIR/corrupt.sqfs   a squashfs superblock followed by garbage.
# Usage: launcher-fixtures.sh DIR
source "$(dirname "$0")/common.sh"
dir=$1
stamp=$(sha256sum "$0" | cut -c1-16)
[ "$(cat "$dir/.stamp" 2>/dev/null)" = "$stamp" ] && exit 0
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
r=$work/rootfs
busybox_tree "$r"
echo "shoal launcher test image" > "$r/etc/shoal-test-image"
cp /bin/busybox "$r/usr/bin/busybox-suid"
chmod 4755 "$r/usr/bin/busybox-suid"
mksquashfs "$r" "$work/busybox.sqfs" -all-root -comp lz4 -no-xattrs -quiet -no-progress >/dev/null
# Garbage after a valid-looking superblock: only the FUSE server notices.
{ head -c 96 "$work/busybox.sqfs"; head -c 65536 /dev/urandom; } > "$work/corrupt.sqfs"
# Keep the size field consistent with the file so the superblock check passes.
truncate -s "$(stat -c %s "$work/busybox.sqfs")" "$work/corrupt.sqfs"
install -m 0644 "$work/busybox.sqfs" "$work/corrupt.sqfs" "$dir/"
echo "$stamp" > "$dir/.stamp"
