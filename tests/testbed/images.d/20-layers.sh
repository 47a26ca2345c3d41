# Sourced by images.sh: hand-made images for the layer rules of the image
# pipeline (see mklayers.py for what each holds).
#
# shoal/layers:latest   whiteouts, opaque dir, file->dir and dir->file, hard
#                       link, symlinks, setuid file, owners, xattr, device,
#                       fifo, long name; three layers (gzip; skopeo compresses
#                       the plain-tar top layer of the layout on push)
# shoal/layers:zstd     the same layers, zstd-compressed
# shoal/evil:latest     a symlink in layer 1, written through by layer 2
# shoal/evil:samelayer  a symlink and a write through it in one layer
# shoal/evil:dotdot     ../../ in a name
# shoal/evil:hardlink   a hard link to ../../etc/shadow
# shoal/evil:absolute   an absolute name (lands inside the image)

# The generator is part of the recipe too.
STAMP=$( { echo "$STAMP"; cat "$HERE/mklayers.py"; } | sha256sum | cut -c1-16)
if ! up_to_date layers || ! up_to_date evil; then
    log "building images shoal/layers and shoal/evil"
    python3 "$HERE/mklayers.py" "$WORK/layers-oci"
    for pair in layers:layers layers-zstd:layers:zstd evil:evil evil-samelayer:evil:samelayer \
        evil-dotdot:evil:dotdot evil-hardlink:evil:hardlink evil-absolute:evil:absolute; do
        tag=${pair%%:*} ref=${pair#*:}
        case $ref in *:*) ;; *) ref=$ref:latest ;; esac
        skopeo copy -q --dest-cert-dir "$TLS_DIR/skopeo" \
            "oci:$WORK/layers-oci:$tag" "docker://$REGISTRY_ADDR/shoal/$ref"
    done
    stamp layers
    stamp evil
fi
