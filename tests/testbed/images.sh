#!/usr/bin/env bash
# Builds the test images from local material only (busybox-static, Debian's
# mirror for debootstrap) and pushes them to the test registry. Each piece in
# images.d/ builds the images one feature's tests need, with the helpers below.
source "$(dirname "$0")/common.sh"

WORK=$TESTBED_STATE/images
mkdir -p "$WORK"
HERE=$(cd "$(dirname "$0")" && pwd)

registry_has() {  # registry_has REPO TAG
    curl -sf --cacert "$CA_CERT" -o /dev/null \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        -H 'Accept: application/vnd.oci.image.index.v1+json' \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "https://$REGISTRY_ADDR/v2/$1/manifests/$2"
}
# An image is current when the registry has it and its recipe (the piece in
# images.d/ that builds it, and this file) is unchanged since it was built.
up_to_date() { [ "$(cat "$WORK/$1.stamp" 2>/dev/null)" = "$STAMP" ] && registry_has "shoal/$1" "${2:-latest}"; }
stamp() { echo "$STAMP" > "$WORK/$1.stamp"; }
push() {  # push LAYOUT_TAG REPO:TAG
    skopeo copy -q --dest-cert-dir "$TLS_DIR/skopeo" "oci:$WORK/oci:$1" "docker://$REGISTRY_ADDR/$2"
}
mkdir -p "$TLS_DIR/skopeo" && cp "$CA_CERT" "$TLS_DIR/skopeo/ca.crt"

# A fresh layout for one image; prints the bundle's rootfs.
new_image() {  # new_image NAME
    rm -rf "$WORK/bundle-$1"
    [ -d "$WORK/oci" ] || umoci init --layout "$WORK/oci"
    umoci rm --image "$WORK/oci:$1" 2>/dev/null || true
    umoci new --image "$WORK/oci:$1"
    umoci unpack --image "$WORK/oci:$1" "$WORK/bundle-$1" >/dev/null
}


for piece in "$HERE"/images.d/*.sh; do
    STAMP=$(cat "$0" "$piece" | sha256sum | cut -c1-16)
    source "$piece"
done
