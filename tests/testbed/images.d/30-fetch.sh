# Sourced by images.sh: images for the pull protocol and store tests
# (tests/image_pull.rs). All tiny except fetch-big.
#
# shoal/fetch-multiarch:latest   an OCI index of linux/amd64, linux/arm64/v8
#                                and linux/arm/v7 images; each has
#                                /etc/platform naming its platform
# shoal/fetch-big:latest         one 48 MB incompressible layer, so a pull
#                                lasts long enough to be killed or raced
# shoal/fetch-corrupt:latest     its layer blob damaged in the registry's
#                                storage (same size, one byte changed)
# shoal/fetch-badmanifest:latest its manifest replaced in the registry's
#                                storage by JSON that is no image manifest
# 127.0.0.1:5444/shoal/busybox   the busybox image on the registry that
#                                wants a login (up.sh)

registry_blob() {  # registry_blob ROOT DIGEST: the file a registry serves it from
    local hex=${2#sha256:}
    echo "$1/docker/registry/v2/blobs/sha256/${hex:0:2}/$hex/data"
}
layout_digest() {  # layout_digest LAYOUT TAG: the manifest digest of TAG
    jq -r --arg t "$2" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$1/index.json"
}
tiny_image() {  # tiny_image NAME TEXT [umoci config args...]: one file, /etc/platform
    local name=$1 text=$2; shift 2
    new_image "$name"
    mkdir -p "$WORK/bundle-$name/rootfs/etc"
    echo "$text" > "$WORK/bundle-$name/rootfs/etc/platform"
    umoci repack --image "$WORK/oci:$name" "$WORK/bundle-$name"
    [ $# -eq 0 ] || umoci config --image "$WORK/oci:$name" "$@"
}

if ! up_to_date fetch-multiarch; then
    log "building image shoal/fetch-multiarch (an index of three platforms)"
    ml=$WORK/oci-multiarch
    rm -rf "$ml" && mkdir -p "$ml/blobs/sha256"
    entries=()
    for p in linux/amd64 linux/arm64/v8 linux/arm/v7; do
        IFS=/ read -r os arch variant <<<"$p"
        n=fetch-ma-$arch
        args=(--os "$os" --architecture "$arch" --config.cmd /bin/true)
        tiny_image "$n" "$p" "${args[@]}"
        d=$(layout_digest "$WORK/oci" "$n")
        # The manifest and every blob it names.
        for b in "$d" $(jq -r '.config.digest, .layers[].digest' "$WORK/oci/blobs/sha256/${d#sha256:}"); do
            cp "$WORK/oci/blobs/sha256/${b#sha256:}" "$ml/blobs/sha256/"
        done
        size=$(stat -c %s "$WORK/oci/blobs/sha256/${d#sha256:}")
        plat=$(jq -cn --arg os "$os" --arg arch "$arch" --arg v "$variant" \
            '{os: $os, architecture: $arch} + (if $v == "" then {} else {variant: $v} end)')
        entries+=("$(jq -cn --arg d "$d" --argjson s "$size" --argjson p "$plat" \
            '{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $d, size: $s, platform: $p}')")
    done
    index=$(printf '%s\n' "${entries[@]}" | jq -cs '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json", manifests: .}')
    printf '%s' "$index" > "$ml/index.blob"
    idx=sha256:$(sha256sum "$ml/index.blob" | cut -d' ' -f1)
    mv "$ml/index.blob" "$ml/blobs/sha256/${idx#sha256:}"
    echo '{"imageLayoutVersion":"1.0.0"}' > "$ml/oci-layout"
    jq -cn --arg d "$idx" --argjson s "${#index}" \
        '{schemaVersion: 2, manifests: [{mediaType: "application/vnd.oci.image.index.v1+json", digest: $d, size: $s, annotations: {"org.opencontainers.image.ref.name": "latest"}}]}' \
        > "$ml/index.json"
    skopeo copy -q --all --dest-cert-dir "$TLS_DIR/skopeo" "oci:$ml:latest" "docker://$REGISTRY_ADDR/shoal/fetch-multiarch:latest"
    stamp fetch-multiarch
fi

if ! up_to_date fetch-big; then
    log "building image shoal/fetch-big (48 MB of random bytes)"
    new_image fetch-big
    mkdir -p "$WORK/bundle-fetch-big/rootfs/data"
    head -c 48M /dev/urandom > "$WORK/bundle-fetch-big/rootfs/data/random.bin"
    umoci repack --image "$WORK/oci:fetch-big" "$WORK/bundle-fetch-big"
    umoci config --image "$WORK/oci:fetch-big" --config.cmd /bin/true
    push fetch-big shoal/fetch-big:latest
    rm -rf "$WORK/bundle-fetch-big"
    stamp fetch-big
fi

if ! up_to_date fetch-corrupt; then
    log "building image shoal/fetch-corrupt (a damaged layer in the registry)"
    tiny_image fetch-corrupt "corrupt fixture $(date +%s%N)"
    push fetch-corrupt shoal/fetch-corrupt:latest
    d=$(layout_digest "$WORK/oci" fetch-corrupt)
    layer=$(jq -r '.layers[0].digest' "$WORK/oci/blobs/sha256/${d#sha256:}")
    f=$(registry_blob "$REGISTRY_DIR/data" "$layer")
    [ -f "$f" ] || die "registry blob $f not found"
    # Flip the last byte: same size, different content.
    last=$(( $(stat -c %s "$f") - 1 ))
    byte=$(od -An -tu1 -j "$last" -N1 "$f" | tr -d ' ')
    printf "$(printf '\\%03o' $(( (byte + 1) % 256 )))" | dd of="$f" bs=1 seek="$last" conv=notrunc status=none
    stamp fetch-corrupt
fi

if ! up_to_date fetch-badmanifest; then
    log "building image shoal/fetch-badmanifest (a broken manifest in the registry)"
    tiny_image fetch-badmanifest "bad manifest fixture"
    push fetch-badmanifest shoal/fetch-badmanifest:latest
    d=$(layout_digest "$WORK/oci" fetch-badmanifest)
    f=$(registry_blob "$REGISTRY_DIR/data" "$d")
    [ -f "$f" ] || die "registry manifest blob $f not found"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}' > "$f"
    stamp fetch-badmanifest
fi

# The login-protected registry: busybox, pushed with the test login.
if [ "$(cat "$WORK/auth-busybox.stamp" 2>/dev/null)" != "$STAMP" ] || \
   ! curl -sf --cacert "$CA_CERT" -u "$AUTH_REGISTRY_USER:$AUTH_REGISTRY_PASSWORD" -o /dev/null \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "https://$AUTH_REGISTRY_ADDR/v2/shoal/busybox/manifests/latest"; then
    log "pushing shoal/busybox to $AUTH_REGISTRY_ADDR"
    skopeo copy -q --dest-cert-dir "$TLS_DIR/skopeo" --dest-creds "$AUTH_REGISTRY_USER:$AUTH_REGISTRY_PASSWORD" \
        "oci:$WORK/oci:busybox" "docker://$AUTH_REGISTRY_ADDR/shoal/busybox:latest"
    echo "$STAMP" > "$WORK/auth-busybox.stamp"
fi

# The Bearer-token registry: busybox, pushed with the test login (skopeo
# goes through the token server too).
if [ "$(cat "$WORK/token-busybox.stamp" 2>/dev/null)" != "$STAMP" ] || \
   [ "$(skopeo inspect --cert-dir "$TLS_DIR/skopeo" --creds "$AUTH_REGISTRY_USER:$AUTH_REGISTRY_PASSWORD" \
        --format '{{.Name}}' "docker://$TOKEN_REGISTRY_ADDR/shoal/busybox:latest" 2>/dev/null)" = "" ]; then
    log "pushing shoal/busybox to $TOKEN_REGISTRY_ADDR"
    skopeo copy -q --dest-cert-dir "$TLS_DIR/skopeo" --dest-creds "$AUTH_REGISTRY_USER:$AUTH_REGISTRY_PASSWORD" \
        "oci:$WORK/oci:busybox" "docker://$TOKEN_REGISTRY_ADDR/shoal/busybox:latest"
    echo "$STAMP" > "$WORK/token-busybox.stamp"
fi
