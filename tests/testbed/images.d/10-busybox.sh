# Sourced by images.sh: the smallest image, for tests of the plugin and launcher.

# shoal/busybox:latest: busybox userland and a marker file only the image has.
if ! up_to_date busybox; then
    log "building image shoal/busybox"
    new_image busybox
    r=$WORK/bundle-busybox/rootfs
    busybox_tree "$r"
    echo "shoal test image: busybox" > "$r/etc/shoal-test-image"
    umoci repack --image "$WORK/oci:busybox" "$WORK/bundle-busybox"
    umoci config --image "$WORK/oci:busybox" --config.env PATH=/usr/local/bin:/usr/bin:/bin \
        --config.cmd /bin/sh --config.workingdir / --config.label org.shoal.test=busybox
    push busybox shoal/busybox:latest
    stamp busybox
fi

# shoal/busybox:v2: the same userland with a different marker, so a test can
# move a tag from one image to the other and tell which one ran.
if [ "$(cat "$WORK/busybox-v2.stamp" 2>/dev/null)" != "$STAMP" ] || ! registry_has shoal/busybox v2; then
    log "building image shoal/busybox:v2"
    new_image busybox-v2
    r=$WORK/bundle-busybox-v2/rootfs
    busybox_tree "$r"
    echo "shoal test image: busybox v2" > "$r/etc/shoal-test-image"
    umoci repack --image "$WORK/oci:busybox-v2" "$WORK/bundle-busybox-v2"
    umoci config --image "$WORK/oci:busybox-v2" --config.env PATH=/usr/local/bin:/usr/bin:/bin \
        --config.cmd /bin/sh --config.workingdir /
    push busybox-v2 shoal/busybox:v2
    stamp busybox-v2
fi
