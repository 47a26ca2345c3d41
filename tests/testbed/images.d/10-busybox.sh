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
