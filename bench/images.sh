#!/usr/bin/env bash
# The third launch image, pushed to the test registry as
# 127.0.0.1:5443/$PYSTACK_REF (bench/lib/trees.sh): Debian 13 (trixie)
# minbase with python3-numpy, -scipy, -pandas and -sympy from the local apt
# mirror (debootstrap_tree, cached), their byte-compiled caches included
# (about 18,000 paths, 470 MB, against debian-mpich's 10,000 paths, 300 MB
# of mostly MPICH and OpenBLAS libraries). Two layers: the system, then /usr/lib/python3
# (the Python packages) on their own, the way a Python stack is often
# layered on a base image.
#
#   bash bench/images.sh        (root; the test bed's registry up)
#
# Rebuilt only when the tree or this recipe changes (stamp under
# $TESTBED_STATE/bench/images). Pushing holds the cluster lock briefly.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/testbed/common.sh
source bench/lib/trees.sh
W=$TESTBED_STATE/bench/images
mkdir -p "$W" "$TLS_DIR/skopeo"
cp "$CA_CERT" "$TLS_DIR/skopeo/ca.crt"
tree=$(nice -n 10 bash -c 'source tests/testbed/common.sh; source bench/lib/trees.sh; debootstrap_tree bench-pystack "$PYSTACK_INCLUDE" "$PYSTACK_SUITE"')
# The recipe is this script's code (not its comments) and the tree.
stamp=$( { grep -v '^[[:space:]]*#' "$0"; echo "$tree"; } | sha256sum | cut -c1-16)
have=$(curl -sf --cacert "$CA_CERT" -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "https://$REGISTRY_ADDR/v2/${PYSTACK_REF%:*}/manifests/${PYSTACK_REF##*:}" && echo yes || true)
if [ "$have" = yes ] && [ "$(cat "$W/pystack.stamp" 2>/dev/null)" = "$stamp" ]; then
    log "$REGISTRY_ADDR/$PYSTACK_REF is current"
    exit 0
fi
log "building $REGISTRY_ADDR/$PYSTACK_REF from $tree"
rm -rf "$W/oci" "$W/bundle"
umoci init --layout "$W/oci"
umoci new --image "$W/oci:pystack"
umoci unpack --image "$W/oci:pystack" "$W/bundle" >/dev/null
r=$W/bundle/rootfs
# Layer 1: the system without the Python packages.
tar -C "$tree" --exclude=./usr/lib/python3 --exclude='./var/cache/apt/*' --exclude='./usr/share/doc/*' -cf - . | tar -C "$r" -xf -
nice -n 10 umoci repack --refresh-bundle --image "$W/oci:pystack" "$W/bundle"
# Layer 2: the Python packages.
tar -C "$tree" -cf - ./usr/lib/python3 | tar -C "$r" -xf -
nice -n 10 umoci repack --image "$W/oci:pystack" "$W/bundle"
umoci config --image "$W/oci:pystack" \
    --config.env PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin \
    --config.env LANG=C.UTF-8 --config.cmd /usr/bin/python3 --config.workingdir / \
    --config.label org.shoal.bench=pystack
log "$(find "$r" | wc -l) paths, $(du -sm "$r" | cut -f1) MB unpacked"
flock -o /tmp/shoal-cluster.lock skopeo copy -q --dest-cert-dir "$TLS_DIR/skopeo" "oci:$W/oci:pystack" "docker://$REGISTRY_ADDR/$PYSTACK_REF"
echo "$stamp" > "$W/pystack.stamp"
rm -rf "$W/oci" "$W/bundle"
